"""build: turning source into images.

``builders`` compiles an app in its builder container, one per technology
(detection, ``deployer.yml``, the base and builder images); ``image`` is the
image builder (version from git, tags, OCI labels, push); ``transfer`` sends
the source to the build engine and brings ``/out`` back as tar archives over
its API (ignore files, the size limit) and moves images between engines; ``registry`` the
registry's HTTP client and ``registry_auth`` its answers to a 401 (Basic, the
token flow); ``samples`` the tiny sample images. May import
engine, config, gitrepo and the shared modules; never ops or cli.
"""
