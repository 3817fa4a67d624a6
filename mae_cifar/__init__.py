"""The library behind the entry scripts at the repository root.

    data/        datasets on the device, the batched loader, batched augmentation
    training/    the Trainer loop, run folders and resume, recipes, the stages' flags,
                 the classifier's building blocks, objectives, lr schedule
    evaluation/  kNN, the tuned probe grids, features and accuracy, reconstruction grids
    reporting/   run files -> DataFrame -> statistics -> tables and figures (no torch)
    cli, fileio, checkpoint, weights, distributed: one-line errors and flag types, atomic
    file I/O, checkpoints, weights in and out, torchrun plumbing

It builds on the root modules model.py and utils.py, which import nothing of the project;
nothing here imports an entry script. Importing a module does no work.
"""
