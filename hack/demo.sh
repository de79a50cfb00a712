#!/usr/bin/env bash
# make demo: a local API server (etcd + kube-apiserver), the SSM simulator and the operator
# (with --send-commands).
#   1. applies examples/commandinvocation.yaml and shows it reach Success in `kubectl get`;
#   2. applies examples/command.yaml (a Command for the nodes tagged Role=web): the operator
#      sends it once, the simulator resolves the tag to three nodes (one scripted to fail, see
#      hack/demo-scenario.json), and `kubectl get` shows the run finish and a child per node;
#   3. the same from a terminal with the `kubectl ssm` plugin (kubectl-ssm on PATH): `run` sends
#      a shell command to two nodes and follows it to its exit status, then `logs` shows the
#      output of every node, prefixed by its instance id.
# Everything binds 127.0.0.1 and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

assets="$(bash hack/envtest-assets.sh)"
kubectl="$assets/kubectl"
say "building the operator, the SSM simulator and the test bed"
cargo build --quiet --locked --workspace --bins
bin="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# wait_line FILE PATTERN: until a line matching PATTERN appears (60 s at most).
wait_line() {
  for _ in $(seq 600); do
    if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1:" >&2; tail -20 "$1" "${1%.out}.err" >&2 2>/dev/null; return 1
}

say "starting kube-apiserver + etcd on loopback"
KUBEBUILDER_ASSETS="$assets" "$bin/testbed" --dir "$work" > "$work/testbed.out" 2> "$work/testbed.err" &
pids+=($!)
wait_line "$work/testbed.out" "testbed ready"
export KUBECONFIG="$work/kubeconfig"
"$kubectl" version 2>/dev/null | grep Server

say "starting the SSM simulator (hack/demo-scenario.json)"
"$bin/ssm-sim" --bind 127.0.0.1:0 --scenario hack/demo-scenario.json > "$work/sim.out" 2> "$work/sim.err" &
pids+=($!)
wait_line "$work/sim.out" "listening on"
endpoint="$(grep -o 'http://[0-9.:]*' "$work/sim.out" | head -1)"
echo "SSM endpoint: $endpoint"

say "installing the CRDs"
"$kubectl" apply -f crds/commandinvocation.yaml -f crds/command.yaml
"$kubectl" wait --for=condition=Established --timeout=60s \
  crd/commandinvocations.ssm.operator.dev crd/commands.ssm.operator.dev

say "starting ssm-operator --send-commands (log: operator.log)"
AWS_ENDPOINT_URL_SSM="$endpoint" AWS_REGION=eu-west-1 AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo \
AWS_EC2_METADATA_DISABLED=true \
  "$bin/ssm-operator" run --http-bind 127.0.0.1:0 --poll-interval-min 500ms --poll-interval-max 2s \
  --progress-after 1s --send-commands \
  > "$work/operator.log" 2>&1 &
pids+=($!)
wait_line "$work/operator.log" "caches synced"

say "kubectl apply -f examples/commandinvocation.yaml; kubectl get cinv -w"
"$kubectl" apply -f examples/commandinvocation.yaml
"$kubectl" get cinv --watch &
watch_pid=$!
"$kubectl" wait --for=condition=Finished --timeout=120s cinv/patch-web-1 > /dev/null
sleep 0.5  # let the watch print its last line before stopping it
kill "$watch_pid" 2>/dev/null || true
wait "$watch_pid" 2>/dev/null || true

say "kubectl get cinv -o wide"
"$kubectl" get cinv -o wide
say "kubectl describe cinv patch-web-1"
"$kubectl" describe cinv patch-web-1

status="$("$kubectl" get cinv patch-web-1 -o jsonpath='{.status.status}')"
say "result (part 1): $status"
[ "$status" = Success ] || { echo "expected patch-web-1 to succeed" >&2; exit 1; }

# Part 2: a Command the operator sends itself, exactly once, with a child per node.
command=web-uptime
say "kubectl apply -f examples/command.yaml; kubectl get ssmcmd -w"
"$kubectl" apply -f examples/command.yaml
"$kubectl" get ssmcmd --watch &
watch_pid=$!
"$kubectl" wait --for=condition=Finished --timeout=60s "ssmcmd/$command" > /dev/null
sleep 0.5
kill "$watch_pid" 2>/dev/null || true
wait "$watch_pid" 2>/dev/null || true

say "kubectl get ssmcmd -o wide"
"$kubectl" get ssmcmd -o wide
# The children follow their own invocations; wait until each has its final status.
"$kubectl" wait --for=condition=Finished --timeout=60s cinv -l "ssm.operator.dev/command=$command" > /dev/null
say "kubectl get cinv -l ssm.operator.dev/command=$command"
"$kubectl" get cinv -l "ssm.operator.dev/command=$command"
say "the failed node's stderr"
"$kubectl" get cinv -l "ssm.operator.dev/command=$command" \
  -o jsonpath='{range .items[?(@.status.status=="Failed")]}{.metadata.name}: {.status.standardErrorContent}{end}'
say "SendCommand calls made by the operator: $(grep -c 'SendCommand result=Accepted' "$work/operator.log")"

# As scripted: 3 nodes, one fails (exit code 1), so SSM reports the command Failed.
result="$("$kubectl" get ssmcmd "$command" -o jsonpath='{.status.status} {.status.done} {.status.errorCount}')"
say "result (part 2): $result (status, done, errors; one node is scripted to fail)"
[ "$result" = "Failed 3/3 1" ] || { echo "expected 'Failed 3/3 1' for $command" >&2; exit 1; }

# Part 3: the kubectl plugin. kubectl finds `kubectl-ssm` on PATH (krew's convention).
export PATH="$bin:$PATH"
say "kubectl ssm run demo-uptime --instance-ids i-0a1b2c3d4e5f60001,i-0a1b2c3d4e5f60002 -- uptime"
"$kubectl" ssm run demo-uptime --instance-ids i-0a1b2c3d4e5f60001,i-0a1b2c3d4e5f60002 -- uptime
say "kubectl ssm logs ssmcmd/demo-uptime"
"$kubectl" ssm logs ssmcmd/demo-uptime
say "kubectl ssm logs ssmcmd/$command --failed (exit 0: the output was shown)"
"$kubectl" ssm logs "ssmcmd/$command" --failed
