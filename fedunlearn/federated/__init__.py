"""Federated client withdrawal on Flower + Ray.

Layout, read in this order:
  config.py      the experiment's TOML sections
  client.py      what a client does (its partition, local training, queries) as plain functions
  durable.py     the attacker's Neurotoxin mask (backdoor.mask_top): a backdoor honest rounds rarely overwrite
  fedavg.py      FedAvg arithmetic on state dicts (State, aggregate_replies);  rounds.py  R rounds with history
  history.py     the client updates the server stores (FedEraser's history)
  context.py     FedContext / FedResult: the server's view that every unlearning method gets
  methods/       one module per unlearning method, registry FED_METHODS (contract: fedunlearn/contract.py)
  queries.py     client-side computations a method may ask one client for (CLIENT_QUERIES)
  withdrawal.py  the withdrawal protocol (who may leave)
  transport.py   how the server reaches clients: Flower's grid, or in-process calls (tests, debugging)
  driver.py      the server's script;  report.py  the oracle's evaluation and the report
  app.py         Flower ServerApp / ClientApp (fedunlearn/experiments/federated.py runs them)
  resources.py   Ray resources chosen at run time, the server's Ray worker (ServerWorker)
"""
