"""config: the repository on disk -> the model.

``loader`` reads the repository (``datacenter_file`` checks datacenter.yml's credentials, lock and secrets_dir
settings; ``yamlread`` reads YAML text within the
limits, every failure with its line; ``fastyaml`` is its fast YAML path; ``parse_cache`` keeps what reading and
checking a file gave, by the git blob id of its text, under ``.git/``);
``builder_engine`` reads datacenter.yml's ``builder:`` (the engine its images are built on); ``variables`` gathers the repository's variables of a node (node.yml, ``.env``,
datacenter.yml) and ``interpolate`` resolves ``${...}`` in a compose document
with them, as the Compose spec defines it; ``shared`` resolves ``include`` and
``extends`` with Compose's merge rules (``compose_merge``), ``resolved`` prints
the result as ``docker compose config`` does;
``compose_keys`` holds the supported compose keys and one parser per kind of
value (``scalars`` which YAML scalars are booleans and integers and the string each becomes; ``compose_host`` those of the keys that are one engine argument each:
process, kernel, resource and device settings; ``compose_hooks`` the
post_start / pre_stop hooks the applier runs with the engine's exec), ``compose_check`` and
``compose_check_service`` (with ``compose_check_host`` for the process, resource and hook keys) the compose
check (every key supported exactly or refused with file:line), ``compose_deploy`` the
``deploy:``/``scale``/``profiles`` keys and depends_on options (checked, and
read into host settings and a service's rollout), ``label_check`` the grammar
of the ``deployer.*`` labels discovery reads (the compose check runs it; discovery
reads labels through it), ``compose_spec`` the compose service -> container spec
translation; ``repo_files`` is the one repository-files policy both of them apply
(which files a compose file may ship to a node: secrets, configs, env_file, relative
bind sources; in bounds, small, read once), ``secret_files`` its secret variant,
``compose_files`` what a service ships (bundles, mounts, env_file values) and
``compose_files_check`` its compose check, ``dotenv`` the env_file format; ``yamledit`` makes byte-preserving
YAML edits (``yamlreplicas`` the replica count's), with ``yamltext`` finding nodes in the text, quoting values and
verifying every edit. Pure: no Docker, no network; reads files. May import
only the shared modules (errors, model, labels, values, spec, imageref, files)
and ``gitrepo.git`` for "is this file tracked" answers.
"""
