"""Infrastructure every layer stands on: typed configs, errors that name their input, files on any
filesystem, one writer per output, running a stage into a versioned output directory, Ray at the
edges (joining a cluster, sizing workers), the precision choice, progress lines and the chat client.
Nothing here knows what a trajectory or a retriever is."""
