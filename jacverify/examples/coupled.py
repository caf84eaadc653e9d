"""A module whose samples interact: BatchNorm in training mode normalises with batch statistics."""

from torch import nn

model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
