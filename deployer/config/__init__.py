"""config: the repository on disk -> the model.

The loader, the fast YAML path, byte-preserving YAML edits, Docker image
references, the compose check (every key supported exactly or refused with
file:line) and the compose -> container spec translation. Pure: no Docker, no
network; reads files. May import only the shared modules (errors, model,
labels, values, spec, files) and gitrepo for "is this file tracked" answers.
"""
