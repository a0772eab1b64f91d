"""pga: projected gradient ascent by the departing client (Halimi et al. 2022).

The server sends the reference model w_ref = (n w - n_k w_k) / (n - n_k), the FedAvg aggregate
of the final round without the departing client k (sample-weighted form of (N w - w_k)/(N - 1);
w_k is k's last local model, from the stored last round). The client starts from w_ref and
ascends its own loss, projecting back onto the L2 ball of radius delta around w_ref after every
step, and stops early once its loss passes a threshold. delta is `radius_frac` times the
distance from w_ref to a freshly initialised model. Then a few rounds of FedAvg with the
remaining clients repair what the ascent damaged. Cooperative: needs the departing client.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedunlearn.config import check_range
from fedunlearn.errors import FedUnlearnError
from fedunlearn.federated import fedavg
from fedunlearn.federated.context import FedContext, FedResult
from fedunlearn.federated.rounds import run_fedavg
from fedunlearn.training import loader, seed_everything

COOPERATIVE = True


@dataclass(frozen=True)
class Config:
    lr: float = 0.01
    epochs: int = 5              # most passes over the client's data
    radius_frac: float = 0.33    # ball radius / distance(w_ref, a random model)
    stop_loss: float = 0.0       # stop once a batch loss exceeds this; 0 = ln(num_classes), a uniform guess
    post_rounds: int = 2         # FedAvg rounds with the remaining clients afterwards

    def __post_init__(self):
        check_range("lr", self.lr, 0.0)
        check_range("epochs", self.epochs, 1)
        check_range("radius_frac", self.radius_frac, 0.0)
        check_range("stop_loss", self.stop_loss, 0.0)
        check_range("post_rounds", self.post_rounds, 0)


def reference_model(ctx: FedContext) -> fedavg.State:
    last = ctx.history.rounds[-1] if ctx.history.rounds else None
    if last is not None and last.round == ctx.train_rounds and ctx.departing not in last.updates:
        # partial participation: the client was not sampled in the last round, which it did not shape
        return fedavg.copy_state(ctx.global_state)
    if last is None or last.round != ctx.train_rounds:
        raise FedUnlearnError("pga needs the departing client's update from the last training round in the "
                              "stored history (kept whenever federation.store_every >= 1)")
    counts = {cid: n for cid, n in last.counts().items() if cid != ctx.departing}
    others = (last.updates[cid] for cid in counts)  # read one at a time from a disk store
    state = fedavg.add(last.global_state, fedavg.weighted_sum(others, sum(counts.values())))
    # BatchNorm counters and statistics come from the global model
    state.update({k: v.clone() for k, v in ctx.global_state.items() if not fedavg.is_float(v) or "running" in k})
    return state


def unlearn(ctx: FedContext, cfg: Config) -> FedResult:
    w_ref = reference_model(ctx)
    radius = cfg.radius_frac * fedavg.norm(fedavg.delta(ctx.make_model().state_dict(), w_ref))
    stop = cfg.stop_loss or math.log(ctx.num_classes)
    state, metrics = ctx.query(ctx.departing, "pga_ascent", w_ref,
                               {"lr": cfg.lr, "epochs": cfg.epochs, "radius": radius, "stop_loss": stop})
    curve = [state]
    if cfg.post_rounds:
        state, _, more, _ = run_fedavg(ctx.fit, ctx.remaining, state, cfg.post_rounds, desc="pga post-training",
                                      per_round=getattr(ctx.fed_cfg, "clients_per_round", 0), seed=ctx.seed)
        curve += more
    return FedResult(state, 1 + cfg.post_rounds, curve,
                     {"ascent_steps": metrics.get("steps", 0), "ascent_loss": metrics.get("loss", float("nan")),
                      "radius": radius})


def client_ascent(model, local, config: dict):
    """On the departing client: ascend the loss on its own data inside the ball around the sent model."""
    device = local.device
    center = {k: v.detach().clone() for k, v in model.state_dict().items()}
    radius, stop = float(config["radius"]), float(config["stop_loss"])
    opt = torch.optim.SGD(model.parameters(), lr=float(config["lr"]))
    seed_everything(local.seed)
    # eval mode: BatchNorm statistics stay those of the reference model while the weights move
    model.eval()
    steps, loss_value, done = 0, 0.0, False
    for epoch in range(int(config["epochs"])):
        for x, y in loader(local.train, local.recipe.batch_size, shuffle=True, seed=local.seed + epoch):
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            loss_value = loss.item()
            if loss_value > stop:
                done = True
                break
            opt.zero_grad(set_to_none=True)
            (-loss).backward()
            opt.step()
            steps += 1
            with torch.no_grad():
                model.load_state_dict(fedavg.l2_project(model.state_dict(), center, radius))
        if done:
            break
    return model.state_dict(), {"steps": steps, "loss": loss_value}
