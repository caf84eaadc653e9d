"""A small PINN that returns (u_x, u_xx) together, as forum code does; X holds (x, t).

The bug reproduced: ``u_xx`` is the full gradient of ``u_x`` with respect to X, summed over its
coordinates (u_xx + u_xt). ``derivatives_fixed`` keeps column 0.
"""

import torch

torch.manual_seed(1)


class U(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(2, 12), torch.nn.Tanh(),
                                        torch.nn.Linear(12, 1))

    def forward(self, X):
        return self.body(X)


def derivatives_buggy(u_net, X):
    X = X.clone().requires_grad_(True)
    u = u_net(X)
    u_x = torch.autograd.grad(u, X, torch.ones_like(u), create_graph=True)[0][:, 0:1]
    u_xx = torch.autograd.grad(u_x, X, torch.ones_like(u_x), create_graph=True)[0].sum(1, keepdim=True)
    return u_x, u_xx


def derivatives_fixed(u_net, X):
    X = X.clone().requires_grad_(True)
    u = u_net(X)
    u_x = torch.autograd.grad(u, X, torch.ones_like(u), create_graph=True)[0][:, 0:1]
    u_xx = torch.autograd.grad(u_x, X, torch.ones_like(u_x), create_graph=True)[0][:, 0:1]
    return u_x, u_xx
