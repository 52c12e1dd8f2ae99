"""Search: threshold search over a sysctl and bisection over kernel versions."""
