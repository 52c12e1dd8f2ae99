"""Plan: configuration, kernels x scenarios x sysctls -> cells and batches."""
