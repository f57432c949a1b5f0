#!/usr/bin/env bash
# Build the Java client (protobuf/gRPC classes generated from ../../proto) and run its JUnit 5
# tests against the server at $SEGSRV_ADDR (host:port), checking the fixture at $SEGSRV_FIXTURE
# (default ../fixtures/petnord_expected.json). Without SEGSRV_ADDR the tests are skipped.
#
# Maven's local repository: ~/.m2/repository, or $SEGSRV_M2_REPO if set (e.g. a repo-local
# cache for CI). On a fresh machine Maven downloads the plugins, protoc and
# protoc-gen-grpc-java from Maven Central. Extra arguments go to mvn (e.g. -Dtest=...#predict).
set -euo pipefail
cd "$(dirname "$0")"

command -v mvn >/dev/null || { echo "clients/java: mvn (Maven 3.8+) is not installed" >&2; exit 1; }
command -v java >/dev/null || { echo "clients/java: java (JDK 17+) is not installed" >&2; exit 1; }

args=(-B -q -ntp)
if [[ -n "${SEGSRV_M2_REPO:-}" ]]; then
  args+=("-Dmaven.repo.local=${SEGSRV_M2_REPO}")
fi
if [[ -z "${SEGSRV_ADDR:-}" ]]; then
  echo "clients/java: SEGSRV_ADDR is unset: the tests will be skipped" >&2
fi

rm -rf target/surefire-reports
# (Debian's Maven 3.8 writes ANSI resets even in batch mode: strip them.)
set +o pipefail
mvn "${args[@]}" "$@" test 2>&1 | sed -u 's/\x1b\[[0-9;]*m//g'
status=${PIPESTATUS[0]}
set -o pipefail

# -q hides Surefire's own summary: print one line per test and the totals from the reports.
shopt -s nullglob
reports=(target/surefire-reports/TEST-*.xml)
if (( ${#reports[@]} )); then
  awk '
    function attr(line, key,    v) {
      if (match(line, key "=\"[^\"]*\"")) { v = substr(line, RSTART + length(key) + 2, RLENGTH - length(key) - 3); return v }
      return ""
    }
    function unescape(x) { gsub(/&apos;/, "\047", x); gsub(/&quot;/, "\"", x); gsub(/&lt;/, "<", x); gsub(/&gt;/, ">", x); gsub(/&amp;/, "\\&", x); return x }
    function report() { name = unescape(name); note = unescape(note); if (name != "") printf "  %-7s %s%s\n", state, name, note; name = "" }
    /<testsuite / { t += attr($0, "tests"); f += attr($0, "failures"); e += attr($0, "errors"); s += attr($0, "skipped") }
    /<testcase / { report(); name = attr($0, "name"); state = "ok"; note = "" }
    /<skipped/ { state = "skipped"; m = attr($0, "message"); if (m == "") { m = $0; sub(/.*<skipped[^>]*>(<!\[CDATA\[)?/, "", m); sub(/^[A-Za-z0-9_.$]*Exception: /, "", m) }; note = " (" m ")" }
    /<failure|<error/ { state = "FAILED"; m = attr($0, "message"); note = (m == "" ? "" : " (" m ")") }
    END {
      report()
      printf "Results:\nTests run: %d, Failures: %d, Errors: %d, Skipped: %d\n", t, f, e, s
      printf "java: %d passed, %d failed, %d skipped\n", t - f - e - s, f + e, s
    }' "${reports[@]}"
else
  echo "clients/java: no Surefire reports (the build failed before the tests ran)" >&2
fi
exit "$status"
