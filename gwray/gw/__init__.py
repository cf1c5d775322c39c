"""Pure math on arrays: cost matrices, the GW solver, bounds, the batched path. No Ray, no I/O."""
