"""Where training happens: recipes (the hyperparameters), the run config, the loop, the run directory."""
