"""What a client does, as plain functions: rebuild its own partition, train locally, answer queries.

The Flower ClientApp (app.py) and the in-process transport (transport.py) both call these. The data
set and its partition are deterministic in the seed, so each client rebuilds its own share from
its partition id; the departing client's share carries the backdoor. Nothing but model arrays
and metrics leaves a client.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedunlearn.config import config_hash
from fedunlearn.data import ArrayDataset, DataBundle, load_dataset, partition, poison
from fedunlearn.federated import fedavg
from fedunlearn.federated.durable import allowed_coordinates, project, projected_gradients
from fedunlearn.federated.fedavg import State
from fedunlearn.federated.queries import get_query
from fedunlearn.models import build_model
from fedunlearn.training import TrainConfig, get_device, seed_everything, train


@dataclass
class LocalData:
    client_id: int
    train: ArrayDataset          # the client's training data, backdoored samples included
    poisoned_idx: np.ndarray     # positions in `train` that carry the trigger (empty for honest clients)
    num_classes: int
    input_shape: tuple[int, ...]
    recipe: TrainConfig          # the federation's local training recipe
    device: torch.device
    seed: int
    model_cfg: object

    def make_model(self) -> nn.Module:
        return build_model(self.model_cfg, self.input_shape, self.num_classes)


_CACHE: dict[str, tuple[DataBundle, list[np.ndarray]]] = {}


def federation_data(cfg) -> tuple[DataBundle, list[np.ndarray]]:
    """The data set and every client's index list, cached per process (a Ray actor loads it once)."""
    fed, seed = cfg.federation, cfg.experiment.seed
    key = config_hash([cfg.data, fed.num_clients, fed.partition, fed.alpha, seed])
    if key not in _CACHE:
        data = load_dataset(cfg.data, seed)
        parts = partition(data.train.y.numpy(), fed.num_clients, fed.partition, fed.alpha, seed)
        _CACHE.clear()  # one federation per process at a time: keep memory flat
        _CACHE[key] = (data, parts)
    return _CACHE[key]


def departing_client(cfg) -> int:
    """withdrawal.client as an id: the given id, or the rule ("largest" / "median") applied to the
    partition's sample counts, which every process derives alike from the seed."""
    from fedunlearn.federated.withdrawal import pick_client

    if not isinstance(cfg.withdrawal.client, str):
        return int(cfg.withdrawal.client)
    return pick_client(cfg.withdrawal.client, [len(p) for p in federation_data(cfg)[1]])


def stream_requests(cfg) -> list[tuple[int, int, bool]]:
    """[[withdrawal.requests]] as (client id, round, carries the backdoor), in order. A rule picks
    among the clients still in at that request, so "median" twice names two clients; a client
    named twice is a WithdrawalError."""
    from fedunlearn.federated.withdrawal import Membership, pick_client

    sizes = [len(p) for p in federation_data(cfg)[1]]
    members, out = Membership(len(sizes)), []
    for req in cfg.withdrawal.requests:
        client = req.client
        if isinstance(client, str):
            active = members.active
            client = active[pick_client(client, [sizes[c] for c in active])]
        members.withdraw(int(client))
        out.append((int(client), req.round, req.backdoor))
    return out


def attackers(cfg) -> set[int]:
    """The clients whose data carry the backdoor: the departing client, or in a stream the
    requests marked `backdoor`."""
    if cfg.backdoor.fraction <= 0:
        return set()
    if cfg.withdrawal.requests:
        return {client for client, _, backdoor in stream_requests(cfg) if backdoor}
    return {departing_client(cfg)}


def local_data(cfg, client_id: int) -> LocalData:
    data, parts = federation_data(cfg)
    own = data.train.subset(parts[client_id])
    poisoned = np.zeros(0, dtype=np.int64)
    if client_id in attackers(cfg):
        x, y, poisoned = poison(own.x, own.y, cfg.backdoor, seed=cfg.experiment.seed + 7919)
        own = ArrayDataset(x, y)
    return LocalData(client_id, own, poisoned, data.num_classes, data.input_shape, cfg.federation.local,
                     get_device(cfg.experiment.device), cfg.experiment.seed, cfg.model)


def client_info(local: LocalData) -> dict:
    """The handshake reply: who the client is, how much data it has, the task's shape."""
    return {"partition-id": local.client_id, "num_examples": len(local.train), "num_classes": local.num_classes,
            "input_shape": list(local.input_shape)}


class InjectedFault(RuntimeError):
    """Raised on purpose by federation.fail_client in round federation.fail_round (fault tests)."""


def round_seed(local: LocalData, config: dict) -> int:
    """The seed of a client's local work in one round and phase."""
    phase = zlib.crc32(str(config.get("phase", "")).encode()) % 997
    return local.seed * 1_000_003 + int(config.get("round", 0)) * 1009 + phase * 101 + local.client_id


def local_train(cfg, local: LocalData, state: State, config: dict) -> tuple[State, int, dict]:
    """One round of local training from `state`; returns (local state, num_samples, metrics).

    `config` may override epochs and lr for this round, and `data_fraction` trains on a seeded
    share of the local data (fewer local steps, as FedEraser's calibration does).
    """
    fed = cfg.federation
    rnd = int(config.get("round", 0))
    if config.get("phase") == "train" and local.client_id == fed.fail_client and rnd == fed.fail_round:
        raise InjectedFault(f"client {local.client_id} fails in round {rnd} (federation.fail_client)")
    if config.get("phase") == "train" and local.client_id == fed.hang_client and rnd == fed.hang_round:
        time.sleep(fed.hang_s)  # a node that stops answering (federation.hang_client): the round must not wait
    recipe = dataclasses.replace(local.recipe, **{k: config[k] for k in ("epochs", "lr") if k in config})
    if config.get("phase") == "train" and len(local.poisoned_idx) and cfg.backdoor.local_epochs:
        # the attacker trains longer on its poisoned data, as a real one does until the trigger works
        recipe = dataclasses.replace(recipe, epochs=cfg.backdoor.local_epochs)
    seed = round_seed(local, config)
    data = local.train
    fraction = float(config.get("data_fraction", 1.0))
    if fraction < 1.0:
        count = max(1, int(round(fraction * len(data))))
        data = data.subset(np.sort(np.random.default_rng(seed).choice(len(data), count, replace=False)))
    attacking = config.get("phase") == "train" and len(local.poisoned_idx) > 0
    allowed = durable_mask(cfg, local, state, seed) if attacking and cfg.backdoor.mask_top else None
    model = local.make_model()
    model.load_state_dict(state)
    seed_everything(seed)
    with projected_gradients(model, allowed or {}):
        train(model, data, recipe, local.device, seed=seed, desc=f"client {local.client_id}", progress=False)
    trained = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if allowed is not None:
        trained = project(trained, state, allowed)  # weight decay moved the excluded coordinates too
    if attacking:
        trained = boost(cfg, state, trained, len(data))
    return trained, len(data), {"num_examples": len(data)}


def durable_mask(cfg, local: LocalData, state: State, seed: int) -> dict[str, torch.Tensor]:
    """Neurotoxin's mask (backdoor.mask_top, durable.py): the coordinates the attacker may move.
    The benign update is estimated by the federation's own local recipe (what an honest client
    runs) on the attacker's clean samples, from the received global model (all its samples if none
    is clean); Neurotoxin's reference code likewise ranks the clean-data gradient at the current model."""
    clean = np.setdiff1d(np.arange(len(local.train)), local.poisoned_idx)
    data = local.train.subset(clean) if len(clean) else local.train
    model = local.make_model()
    model.load_state_dict(state)
    seed_everything(seed + 17)
    train(model, data, local.recipe, local.device, seed=seed + 17, desc=f"client {local.client_id} (estimate)",
          progress=False)
    learned = {name for name, _ in model.named_parameters()}
    estimate = {k: v for k, v in fedavg.delta(model.state_dict(), state).items() if k in learned}
    return allowed_coordinates(estimate, cfg.backdoor.mask_top)


def boost(cfg, state: State, trained: State, own_size: int) -> State:
    """The attacker's model replacement (backdoor.boost): it sends state + gamma * (trained - state).
    What it sends is what the server averages and stores, so subtraction removes the boosted update."""
    if not cfg.backdoor.boosted:
        return trained
    fed = cfg.federation
    sizes = [len(p) for p in federation_data(cfg)[1]]
    gamma = cfg.backdoor.gamma(fed.clients_per_round or fed.num_clients, own_size=own_size,
                               mean_size=float(np.mean(sizes)))
    # weights only: normalisation statistics (running_mean / running_var) are measured, not learned,
    # and a scaled running variance could turn negative
    boosted = fedavg.add(state, fedavg.delta(trained, state), gamma)
    return {k: trained[k] if k.rsplit(".", 1)[-1].startswith("running_") else boosted[k] for k in trained}


def answer_query(local: LocalData, name: str, state: State, config: dict) -> tuple[State, dict]:
    """Run CLIENT_QUERIES[name] on this client's data, from a model loaded with `state`."""
    model = local.make_model()
    if state:
        model.load_state_dict(state)
    tensors, metrics = get_query(name)(model.to(local.device), local, config)
    return {k: v.detach().cpu() for k, v in tensors.items()}, dict(metrics)

