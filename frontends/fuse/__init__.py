"""sheepfs: a Sheepdog cluster as a FUSE file system (pyfuse3 on trio; sheepfs(8)).

`main` is the command line, `fs` the tree and its operations, `volume` the mounted VDIs
(QEMU-style `VdiClient` in worker threads), `render` dog's text made in-process.
"""
