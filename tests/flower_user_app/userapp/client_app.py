import time

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from userapp.task import make_model, partition, train

app = ClientApp()


@app.train()
def local_train(msg: Message, context: Context) -> Message:
    pid, parts = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    rnd = int(msg.content["config"]["server-round"])
    if pid == int(context.run_config["hang-partition"]) and rnd == int(context.run_config["hang-round"]):
        time.sleep(float(context.run_config["hang-seconds"]))  # a node that stops answering
    model = make_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = partition(pid, parts)
    loss = train(model, x, y, seed=1000 * rnd + pid)
    metrics = MetricRecord({"num-examples": len(y), "partition-id": pid, "train-loss": loss})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)
