"""A user workload for tqsim: softmax regression on scikit-learn's wine data (trains in well under 1 s).

    tqsim calibrate --workload examples/my_workload.py:make

A factory takes no arguments and returns a ``tqsim.workloads.Workload``: an fp32 torch model in
eval mode, the evaluation inputs (one row per instance), their labels and the quality metric.
tqsim stores it under the name ``my_workload-make``.
"""

import torch
from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split

from tqsim.workloads import Workload


def make() -> Workload:
    x, y = load_wine(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    mean, std = x_train.mean(0), x_train.std(0)
    x_train = torch.tensor((x_train - mean) / std, dtype=torch.float32)
    x_test = torch.tensor((x_test - mean) / std, dtype=torch.float32)

    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], 3)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=100)
    targets = torch.tensor(y_train)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x_train), targets) + 1e-3 * model.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    model.eval()
    return Workload(name="wine-softmax", task="classify wines (softmax regression)", model=model,
                    inputs=x_test, labels=y_test, metric="macro_f1")
