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

# (outside the app: there `rails --version` would load its bundle)
echo "deployer-build: $(ruby --version | cut -d' ' -f1-2), Rails $(cd / && rails --version | cut -d' ' -f2), bundler $(bundle --version | cut -d' ' -f3)"

work=$(mktemp -d)
(cd /src && tar --exclude=./.git --exclude=./tmp --exclude=./log --exclude=./public/assets \
     --exclude=./node_modules -cf - .) | tar -xf - -C "$work"
cd "$work"
mkdir -p tmp/cache /cache/sprockets
ln -s /cache/sprockets tmp/cache/assets

# Gemfile.lock must match the Gemfile (BUNDLE_FROZEN), and every gem it names
# must be one of the image's Debian packages: bundler loads the bundle, offline.
if ! setup=$(ruby -rbundler/setup -e '' 2>&1); then
    if printf '%s\n' "$setup" | grep -q "dependencies in your gemfile changed"; then
        changed=$(printf '%s\n' "$setup" | sed -n 's/^\* //p' | tr '\n' ' ')
        echo "deployer-build: Gemfile.lock does not match the Gemfile (changed: ${changed% }): resolve it again in this image (bundle lock --local) and commit it" >&2
    else
        found=$(printf '%s\n' "$setup" | grep -o -m1 -E "Could not find [^(]*[^ (]" || echo "bundler cannot load the Gemfile's gems")
        echo "deployer-build: ${found%.}: only gems from this image's Debian packages can be used (gem list shows them)" >&2
    fi
    printf '%s\n' "$setup" >&2
    exit 4
fi

export RAILS_ENV=production
# Sprockets logs each file it writes to stderr: that is progress, so it goes to
# stdout on success. On failure the error rake reports (the line after "rails
# aborted!", with sass's "on line N of FILE") comes first, then all of rake's output.
log=$(mktemp)
if ! SECRET_KEY_BASE=deployer-build-dummy-secret-for-assets-precompile-only \
        bin/rails assets:precompile >"$log" 2>&1; then
    reason=$(awk 'found == 1 { r = $0; found = 2; next }
                  found == 2 { if ($0 ~ /^[ \t]+on line /) { sub(/^[ \t]+/, ""); r = r " " $0 }; exit }
                  /^rails aborted!/ { found = 1 }
                  END { print r }' "$log")
    { echo "deployer-build: assets:precompile failed: ${reason:-see its output below}"; cat "$log"; } >&2
    exit 1
fi
cat "$log"

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
