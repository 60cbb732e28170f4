"""Training embedders from identity labels: configs, data, optimisation, the loop."""
