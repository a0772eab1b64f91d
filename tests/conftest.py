import os

# Keep tests quiet and single-threaded per process: the CI machine has 2 cores shared by Ray workers.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
