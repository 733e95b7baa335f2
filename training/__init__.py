"""Training side: dataset specs and catalogues, embedding, fusion training and evaluation."""

import os

# The training jobs run torch and LightGBM or CatBoost in one process, and each brings its own
# OpenMP thread pool. With OpenMP's default of spinning idle threads, the pool that last ran keeps
# the cores busy and the other one's threads wait for them. On 2 cores an EfficientNet-Lite0
# forward pass of one image took 1.4 s after a LightGBM prediction instead of 40 ms. Passive
# waiting puts idle threads to sleep. It must be set before either library starts its pool, and
# a value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
