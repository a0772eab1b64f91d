from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedunlearn.federated.recorder import RecordingStrategy
from userapp.task import make_model

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    strategy = RecordingStrategy(FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=2,
                                        min_available_nodes=3), history_dir=str(cfg["history-dir"]))
    strategy.start(grid, ArrayRecord(make_model().state_dict()), num_rounds=int(cfg["num-server-rounds"]),
                   timeout=float(cfg["round-timeout"]), train_config=ConfigRecord({}))
