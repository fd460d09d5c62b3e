"""The algorithms of the pipeline that are not networks: CAM inference, IR labels and pairs, the random walk's inputs, refinement, thresholds and metrics."""
