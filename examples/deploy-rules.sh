#!/usr/bin/env bash
# Deploys a rules folder to a running cartat-rules, the way code is deployed: check, test,
# plan, copy, reload — then waits until the daemon says it runs the new rule set.
#
#   examples/deploy-rules.sh NEW_RULES LIVE_RULES [CONFIG]
#   YES=1 examples/deploy-rules.sh rules/ /etc/cartat-rules/rules /etc/cartat-rules/cartat.yaml
#
# NEW_RULES  the rules to deploy (a checkout); its tests/ folder is run, not copied.
# LIVE_RULES the folder the daemon reads (`rules.paths` of CONFIG).
# CONFIG     the daemon's config: `server.listen` and `server.admin_token` (the token may come
#            from CARTAT_ADMIN_TOKEN instead). Default /etc/cartat-rules/cartat.yaml.
# YES=1 skips the question after the plan; CARTAT_RULES names the binary (default: on PATH).
# Exit 0 when the daemon runs the new set; non-zero, with the reason, at the first step that
# fails. When the daemon refuses the new rules, the previous ones are put back on disk too (a
# restart would otherwise load the refused set); the previous set stays next to the live
# folder as .rules-previous until the next deploy.
#
# The new rules replace the live folder with two renames, so the daemon's file watch never
# reads half a deploy. A live folder that is a mount point cannot be renamed: its contents are
# replaced in place instead. If the daemon runs in a container with LIVE_RULES bind-mounted on
# its own, mount its parent folder instead (a renamed folder is not what the container sees).
set -euo pipefail
umask 022
new="${1:?usage: deploy-rules.sh NEW_RULES LIVE_RULES [CONFIG]}"
live="${2:?usage: deploy-rules.sh NEW_RULES LIVE_RULES [CONFIG]}"
config="${3:-/etc/cartat-rules/cartat.yaml}"
bin="${CARTAT_RULES:-cartat-rules}"

echo "== check"
"$bin" check --strict "$new"
want=$("$bin" check --format json "$new" | sed -n 's/.*"fingerprint":"\([0-9a-f]*\)".*/\1/p')
[ -n "$want" ] || { echo "deploy: no fingerprint from check" >&2; exit 1; }

if [ -d "$new/tests" ]; then
    echo "== test"
    "$bin" test --rules "$new" -c "$config"      # in the config's rules.timezone
fi

echo "== plan"
if [ -d "$live" ]; then
    "$bin" plan --rules "$new" --against "$live"
else
    echo "(first deploy: $live does not exist yet)"
fi
if [ "${YES:-}" != 1 ]; then
    read -r -p "deploy rule set $want? [y/N] " answer
    [ "$answer" = y ] || { echo "deploy: not deployed" >&2; exit 1; }
fi

echo "== copy"
parent=$(dirname "$live")
mkdir -p "$parent"
staged=$(mktemp -d "$parent/.rules-new.XXXXXX")
previous="$parent/.rules-previous"
trap 'rm -rf "$staged"' EXIT
# Rule files only (tests stay behind), following symlinks as `check` does.
(cd "$new" && find -L . -path ./tests -prune -o -type f \( -name '*.yaml' -o -name '*.yml' -o -name '*.rhai' \) -print) |
    while read -r f; do mkdir -p "$staged/$(dirname "$f")"; cp -L "$new/$f" "$staged/$f"; done
chmod 755 "$staged"
rm -rf "$previous"
in_place() { [ -d "$live" ] && mountpoint -q "$live" 2>/dev/null; }
if in_place; then
    cp -a "$live" "$previous"
    find "$live" -mindepth 1 -delete
    cp -a "$staged"/. "$live"/
else
    if [ -e "$live" ]; then mv "$live" "$previous"; fi
    mv "$staged" "$live"
fi

echo "== reload"
if ! "$bin" reload -c "$config"; then
    echo "deploy: the daemon refused the new rules; putting the previous ones back" >&2
    if [ -d "$previous" ]; then
        if in_place; then
            find "$live" -mindepth 1 -delete
            cp -a "$previous"/. "$live"/
        else
            rm -rf "$live"
            mv "$previous" "$live"
        fi
    fi
    exit 1
fi

echo "== wait for rule set $want"
for _ in $(seq 30); do
    if "$bin" health -c "$config" 2>/dev/null | grep -q "rule set $want"; then
        echo "deployed: the daemon runs rule set $want"
        exit 0
    fi
    sleep 1
done
echo "deploy: the daemon does not run rule set $want after 30 s (see its log)" >&2
exit 1
