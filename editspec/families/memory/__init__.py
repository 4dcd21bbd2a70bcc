"""The memory family (grace, melo): keys with deferral radii consulted at run time, the weights untouched."""
