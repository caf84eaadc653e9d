"""A small PINN in the style of a public Burgers' equation example: X holds (x, t) in one tensor.

The bug reproduced: ``u_xx_tt = grad(u_x_t, X, ones(X.shape))`` differentiates u_x + u_t, so its
column 0 is u_xx + u_tx, not u_xx. ``u_xx_fixed`` takes the gradient of u_x alone.
"""

import torch

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16),
                          torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()


def u_xx_buggy(X):
    X = X.clone()
    X.requires_grad = True
    u = net(X)
    u_x_t = torch.autograd.grad(u, X, torch.ones([X.shape[0], 1], dtype=X.dtype),
                                retain_graph=True, create_graph=True)[0]
    u_xx_tt = torch.autograd.grad(u_x_t, X, torch.ones(X.shape, dtype=X.dtype), create_graph=True)[0]
    return u_xx_tt[:, [0]]


def u_xx_fixed(X):
    X = X.clone()
    X.requires_grad = True
    u = net(X)
    u_x_t = torch.autograd.grad(u, X, torch.ones_like(u), create_graph=True)[0]
    u_x = u_x_t[:, [0]]
    return torch.autograd.grad(u_x, X, torch.ones_like(u_x), create_graph=True)[0][:, [0]]
