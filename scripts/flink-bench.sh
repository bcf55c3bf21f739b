#!/usr/bin/env bash
# Runs W1/W2/W3 on Apache Flink 2.3 (local mini-cluster, object reuse, chained, discarding
# sink) for same-session comparisons. Flink's jars come from PyPI's apache-flink-libraries
# wheel; the job is crates/bench/flink/Bench.java. Needs Java 17 and pip.
#   scripts/flink-bench.sh <w1|w2|w3> N P
set -euo pipefail
cd "$(dirname "$0")/.."
cache=.cache/flink
if [ ! -d "$cache/pyflink/lib" ]; then
  mkdir -p "$cache"
  pip download apache-flink-libraries==2.3.0 --no-deps -d "$cache" >&2
  python3 -c "import zipfile,glob,sys; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in glob.glob(sys.argv[1]+'/apache_flink_libraries*.whl')]" "$cache"
fi
mkdir -p "$cache/classes"
javac -d "$cache/classes" -cp "$cache/pyflink/lib/*" crates/bench/flink/Bench.java
java -Xmx4g -cp "$cache/classes:$cache/pyflink/lib/*" Bench "$@" 2>/dev/null | grep RESULT
