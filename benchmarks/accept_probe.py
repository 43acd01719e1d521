"""Probe: can a separate accept network, trained on generated images only, tell what a person rejects better than
the judge's accept head? Trained on the eye-labelled training split less one held-out collection (and, with
--unprompted, the rule-labelled empty-prompt generations); scored on the audit split and that collection.

    python benchmarks/accept_probe.py work/eye-f [--unprompted]     # a collection with images.npz and rejected.txt

Prints every 250 steps the AUC, the agreement at 0.5 and the false accepts on both (docs/judge-families.md).
"""

import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from perfusion.world.families.eye_labels import UNPROMPTED_PATH, EyeLabels, verdict_scores

torch.set_num_threads(1)
torch.manual_seed(0)
store = EyeLabels.load()
held_out = sys.argv[1]
f = np.load(f"{held_out}/images.npz")["images"]
fset = {a.tobytes() for a in f}
rej_f = {int(x) for x in open(f"{held_out}/rejected.txt").read().split(",")}
yf = np.array([i not in rej_f for i in range(len(f))])
train = store.split("train")
keep = np.array([a.tobytes() not in fset for a in train.images])
X, Y = train.images[keep], train.accepted[keep]
use_unprompted = "--unprompted" in sys.argv
if use_unprompted:
    u = EyeLabels.load(UNPROMPTED_PATH)
    X = np.concatenate([X, u.images])
    Y = np.concatenate([Y, u.accepted])
audit = store.split("audit")
print("train", len(X), "accepted", Y.sum())


def t(a):
    return torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255


Xt, Yt = t(X), torch.from_numpy(Y.astype(np.float32))


def block(i, o):
    return nn.Sequential(
        nn.Conv2d(i, o, 3, padding=1),
        nn.BatchNorm2d(o),
        nn.ReLU(),
        nn.Conv2d(o, o, 3, padding=1),
        nn.BatchNorm2d(o),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


net = nn.Sequential(
    block(3, 32),
    block(32, 64),
    block(64, 128),
    block(128, 128),
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
    nn.Dropout(0.3),
    nn.Linear(128, 1),
)
opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-3)


def augment(x):
    if torch.rand(()) < 0.5:
        x = x.flip(3)
    dx, dy = torch.randint(-6, 7, (2,)).tolist()
    x = torch.roll(x, (dy, dx), (2, 3))
    perm = torch.randperm(3)
    x = x[:, perm]  # colour channels shuffled: objectness does not depend on hue
    return x


def figures(p, y) -> str:
    """AUC of the accept probability, and agreement and false accepts at 0.5, against the eye's verdicts."""
    scores = verdict_scores(p > 0.5, y)
    return f"auc {auc(p, y):.3f} agree@.5 {scores['agreement']:.2f} FA {scores['false_accepts']:.2f}"


def auc(p, y):
    return float((p[y][:, None] > p[~y][None, :]).mean())


@torch.no_grad()
def score(a):
    net.eval()
    p = torch.sigmoid(net(t(a))).squeeze(1).numpy()
    net.train()
    return p


pos_w = (1 - Yt.mean()) / Yt.mean()
for step in range(1, 1501):
    idx = torch.randint(len(Xt), (64,))
    x = augment(Xt[idx])
    y = Yt[idx]
    loss = F.binary_cross_entropy_with_logits(net(x).squeeze(1), y, pos_weight=pos_w)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 250 == 0:
        print(step, round(loss.item(), 3), "audit", figures(score(audit.images), audit.accepted), end=" | ")
        print("held out", figures(score(f), yf), flush=True)
