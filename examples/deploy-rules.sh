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
# fails (the daemon keeps its last good set).
set -euo pipefail
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
    "$bin" test --rules "$new"
fi

echo "== plan"
"$bin" plan --rules "$new" --against "$live"
if [ "${YES:-}" != 1 ]; then
    read -r -p "deploy rule set $want? [y/N] " answer
    [ "$answer" = y ] || { echo "deploy: not deployed" >&2; exit 1; }
fi

echo "== copy"
# Into a fresh folder next to the live one, then swapped in with two renames, so the daemon's
# file watch never reads half a deploy.
parent=$(dirname "$live")
staged=$(mktemp -d "$parent/.rules-new.XXXXXX")
old="$parent/.rules-old.$$"
(cd "$new" && find . -path ./tests -prune -o -type f \( -name '*.yaml' -o -name '*.yml' -o -name '*.rhai' \) -print) |
    while read -r f; do mkdir -p "$staged/$(dirname "$f")"; cp "$new/$f" "$staged/$f"; done
chmod 755 "$staged"
mv "$live" "$old"
mv "$staged" "$live"
rm -rf "$old"

echo "== reload"
"$bin" reload -c "$config"

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
