"""Hyperparameter-tuning tasks on data sets that ship with scikit-learn (no downloads).

Each objective is a plain function ``f(params) -> float`` (the value to minimize) with
its search space attached as ``f.space``, so the CLI can run e.g.::

    bbopt tune tasks/hpo.py:digits_mlp --space tasks/spaces/digits_mlp.json

Every objective is deterministic given its params: splits and model seeds are fixed
(digits_mlp: bit-identical for a given torch thread count; float summation order, and
so the last digits of training, can change with the number of threads).
torch and scikit-learn are imported on first call, so importing this module is cheap.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from bbopt.tasks.base import Task, register

from bbopt.space import Categorical, Float, Int, Space

SEED = 0

# --------------------------------------------------------------------------- digits MLP
DIGITS_EPOCHS = 20
DIGITS_VALID_FRACTION = 0.3


@lru_cache(maxsize=1)
def _digits_data() -> tuple[Any, Any, Any, Any]:
    """Standardized digits, fixed stratified train/validation split, as torch tensors."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_tr, X_va, y_tr, y_va = train_test_split(
        X, y, test_size=DIGITS_VALID_FRACTION, stratify=y, random_state=SEED
    )
    mean = X_tr.mean(axis=0)
    std = X_tr.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a few border pixels are always 0
    X_tr = (X_tr - mean) / std
    X_va = (X_va - mean) / std
    return (
        torch.tensor(X_tr, dtype=torch.float32),
        torch.tensor(y_tr, dtype=torch.long),
        torch.tensor(X_va, dtype=torch.float32),
        torch.tensor(y_va, dtype=torch.long),
    )


def digits_mlp(params: dict[str, Any]) -> float:
    """Validation error rate (1 - accuracy) of an MLP trained with Adam on sklearn digits."""
    import torch
    from torch import nn

    X_tr, y_tr, X_va, y_va = _digits_data()
    lr = float(params["lr"])
    weight_decay = float(params["weight_decay"])
    width = int(params["width"])
    depth = int(params["depth"])
    act = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}[params["activation"]]
    batch_size = int(params["batch_size"])

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        gen = torch.Generator().manual_seed(SEED)
        layers: list[nn.Module] = []
        n_in = X_tr.shape[1]
        for _ in range(depth):
            layers += [nn.Linear(n_in, width), act()]
            n_in = width
        layers.append(nn.Linear(n_in, 10))
        model = nn.Sequential(*layers)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        loss_fn = nn.CrossEntropyLoss()
        n = X_tr.shape[0]
        model.train()
        for _ in range(DIGITS_EPOCHS):
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, batch_size):
                idx = perm[start : start + batch_size]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(X_tr[idx]), y_tr[idx])
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            logits = model(X_va)
    # diverged training (NaN logits) counts as every prediction wrong
    correct = (logits.argmax(dim=1) == y_va) & torch.isfinite(logits).all(dim=1)
    return 1.0 - int(correct.sum()) / len(y_va)


digits_mlp.space = Space(
    {
        "lr": Float(1e-4, 1e-1, log=True),
        "weight_decay": Float(1e-6, 1e-2, log=True),
        "width": Int(16, 256, log=True),
        "depth": Int(1, 4),
        "activation": Categorical(["relu", "tanh", "gelu"]),
        "batch_size": Categorical([16, 32, 64, 128]),
    }
)


# --------------------------------------------------------------- breast cancer GBM
@lru_cache(maxsize=1)
def _breast_cancer_data() -> tuple[Any, Any]:
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer(return_X_y=True)


def breast_cancer_gbm(params: dict[str, Any]) -> float:
    """Mean 3-fold stratified CV log-loss of HistGradientBoostingClassifier."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    X, y = _breast_cancer_data()
    model = HistGradientBoostingClassifier(
        learning_rate=float(params["learning_rate"]),
        max_depth=int(params["max_depth"]),
        max_leaf_nodes=int(params["max_leaf_nodes"]),
        min_samples_leaf=int(params["min_samples_leaf"]),
        l2_regularization=float(params["l2_regularization"]),
        max_iter=100,
        early_stopping=False,
        random_state=SEED,
    )
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=SEED)
    scores = cross_val_score(model, X, y, cv=cv, scoring="neg_log_loss")
    value = -float(scores.mean())
    return value if math.isfinite(value) else float("inf")


breast_cancer_gbm.space = Space(
    {
        "learning_rate": Float(1e-3, 1.0, log=True),
        "max_depth": Int(2, 12),
        "max_leaf_nodes": Int(4, 64, log=True),
        "min_samples_leaf": Int(2, 64, log=True),
        "l2_regularization": Float(1e-6, 10.0, log=True),
    }
)


# ------------------------------------------------------------------------- wine SVM
@lru_cache(maxsize=1)
def _wine_data() -> tuple[Any, Any]:
    from sklearn.datasets import load_wine

    return load_wine(return_X_y=True)


def wine_svm(params: dict[str, Any]) -> float:
    """1 - mean 5-fold stratified CV accuracy of a standardized RBF SVC on sklearn wine."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    X, y = _wine_data()
    model = make_pipeline(
        StandardScaler(), SVC(kernel="rbf", C=float(params["C"]), gamma=float(params["gamma"]))
    )
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=SEED)
    return 1.0 - float(cross_val_score(model, X, y, cv=cv, scoring="accuracy").mean())


wine_svm.space = Space({"C": Float(1e-3, 1e3, log=True), "gamma": Float(1e-5, 1.0, log=True)})


# ------------------------------------------------------------------------- registry
register(
    Task(
        "digits_mlp", digits_mlp.space, digits_mlp,
        description=f"torch MLP on sklearn digits, Adam for {DIGITS_EPOCHS} epochs; "
        "validation error rate",
    )
)
register(
    Task(
        "breast_cancer_gbm", breast_cancer_gbm.space, breast_cancer_gbm,
        description="HistGradientBoostingClassifier on breast cancer; 3-fold CV log-loss",
    )
)
register(
    Task(
        "wine_svm", wine_svm.space, wine_svm,
        description="StandardScaler + RBF SVC on wine; 1 - 5-fold CV accuracy",
    )
)
