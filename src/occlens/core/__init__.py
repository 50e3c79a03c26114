"""The bottom layer: settings, window grid, images, fills, scoring, results and atomic files.

Plain data and rules with no knowledge of models, tracing or engines: loading a saved result needs
nothing above this package."""
