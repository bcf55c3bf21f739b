#!/usr/bin/env bash
# K1 on Apache Flink 2.3 with Flink's own Kafka connector (flink-connector-kafka
# 5.0.0-2.2 from Maven Central) against the same broker and input as `sluice-bench k1`:
#   scripts/flink-k1.sh BOOTSTRAP INPUT N P
# Prints a RESULT line (workload=k1-flink) after checking that a read_committed consumer
# sees exactly N records in the output topic. Needs Java 17, Maven, pip.
set -euo pipefail
cd "$(dirname "$0")/.."
bootstrap=$1 input=$2 n=$3 p=$4
cache=.cache/flink
if [ ! -d "$cache/pyflink/lib" ]; then
  mkdir -p "$cache"
  pip download apache-flink-libraries==2.3.0 --no-deps -d "$cache" >&2
  python3 -c "import zipfile,glob,sys; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in glob.glob(sys.argv[1]+'/apache_flink_libraries*.whl')]" "$cache"
fi
if [ ! -f "$cache/kafka-lib/.complete" ]; then
  mvn -q -f crates/bench/flink/kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$PWD/$cache/kafka-lib" >&2
  touch "$cache/kafka-lib/.complete"
fi
cp="$cache/classes:$cache/pyflink/lib/*:$cache/kafka-lib/*"
mkdir -p "$cache/classes"
javac -d "$cache/classes" -cp "$cp" crates/bench/flink/K1.java
output="k1-flink-out-$(date +%s%N)"
cargo build --release -q -p sluice-bench
target/release/sluice-bench k1-topic --bootstrap "$bootstrap" --input "$output" --n "$n" >/dev/null
secs=$(java -Xmx4g -cp "$cp" K1 "$bootstrap" "$input" "$output" "$p" 2>/dev/null | sed -n 's/ELAPSED secs=//p')
count=$(target/release/sluice-bench k1-count --bootstrap "$bootstrap" --input "$output" --n "$n")
if [ "$count" != "$n" ]; then echo "wrong output: $count records, expected $n" >&2; exit 1; fi
python3 -c "import sys; n, p, s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]); print(f'RESULT workload=k1-flink n={n} p={p} secs={s:.3f} rate={n / s:.0f}')" "$n" "$p" "$secs"
