"""Storage: the disk writer thread pool, the three recording formats, naming, sidecars and
recovery. Takes the call core's blocks; imports no front end and no server module."""
