"""Errors a user can act on. Each message says what was wrong and how to fix it."""


class FedUnlearnError(Exception):
    """Base class: the CLI prints these without a traceback."""


class ConfigError(FedUnlearnError):
    """An unknown key, a bad value or an unknown name in a config."""


class DataError(FedUnlearnError):
    """A data set that cannot be found, parsed or selected from."""


class CheckpointError(FedUnlearnError):
    """A checkpoint that is missing, corrupted or belongs to another run."""


class WithdrawalError(FedUnlearnError):
    """A withdrawal request that cannot be honoured (unknown client, already withdrawn, offline)."""


def unknown_choice(kind: str, name: str, choices) -> ConfigError:
    valid = ", ".join(sorted(choices))
    return ConfigError(f"unknown {kind} '{name}'; valid choices: {valid}")
