"""Fine-tuning: the R3D paper's recipe (r3d_18 as an EF < 50% classifier) on a store's own labels.

One module per stage: config (the recipe, torch-free so the CLI can show its defaults cheaply),
data (label expression -> TRAIN/VAL/TEST examples, class balance, clips, batches), model (the
released wrapper and its initialisation), metrics, checkpoint (epoch files, resume, final layout)
and loop (`train_r3d`, which runs them in order).
"""
