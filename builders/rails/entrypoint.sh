#!/bin/sh
# Precompile the assets of the Rails app in /src; hand the app with them to /out.
#   /src    the app, mounted read-only (copied to a scratch dir: precompile writes public/assets, tmp/)
#   /out    the app (without .git, tmp/, log/) with its public/assets, fingerprinted by sprockets
#   /cache  sprockets' cache (/cache/sprockets), a named volume kept between builds
# Gems come from Debian's packages only, installed system-wide in this image:
# Gemfile.lock must be committed and bundler resolves it locally (BUNDLE_FROZEN).
# Rails runs with RAILS_ENV=production and a dummy SECRET_KEY_BASE (the build's only:
# it is not written anywhere). Progress to stdout, errors to stderr, non-zero exit on failure.
set -eu

if [ ! -f /src/Gemfile ] || [ ! -f /src/config/application.rb ]; then
    echo "deployer-build: /src has no Gemfile and config/application.rb: not a Rails app" >&2
    exit 2
fi
if [ ! -f /src/Gemfile.lock ]; then
    echo "deployer-build: /src has no Gemfile.lock: commit one (resolve it in this image: bundle lock --local)" >&2
    exit 2
fi
[ -d /out ] && [ -w /out ] || { echo "deployer-build: /out is not a writable directory" >&2; exit 2; }

work=$(mktemp -d)
(cd /src && tar --exclude=./.git --exclude=./tmp --exclude=./log --exclude=./public/assets \
     --exclude=./node_modules -cf - .) | tar -xf - -C "$work"
cd "$work"
mkdir -p tmp/cache /cache/sprockets
ln -s /cache/sprockets tmp/cache/assets
echo "deployer-build: $(ruby --version | cut -d' ' -f1-2), Rails $(rails --version | cut -d' ' -f2), bundler $(bundle --version | cut -d' ' -f3)"

# Every gem of Gemfile.lock must be one of the image's Debian packages.
if ! missing=$(bundle check 2>&1); then
    echo "$missing" >&2
    echo "deployer-build: the Gemfile names gems this image does not have; only gems from its Debian packages can be used (gem list shows them)" >&2
    exit 4
fi

export RAILS_ENV=production
SECRET_KEY_BASE=deployer-build-dummy-secret-for-assets-precompile-only bin/rails assets:precompile

if ! ls public/assets/.sprockets-manifest-*.json >/dev/null 2>&1 && ! ls public/assets/manifest-*.json >/dev/null 2>&1; then
    echo "deployer-build: assets:precompile wrote no manifest in public/assets" >&2
    exit 3
fi
rm -rf tmp log
tar -cf - . | tar -xf - -C /out
for f in /out/public/assets/*; do
    case "$f" in *.gz) ;; *) echo "deployer-build: built ${f#/out/}" ;; esac
done
if [ -n "${OUT_UID:-}" ]; then
    chown -R "$OUT_UID:${OUT_GID:-$OUT_UID}" /out
fi
