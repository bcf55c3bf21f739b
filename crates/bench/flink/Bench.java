import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.AggregateFunction;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichMapFunction;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink;
import org.apache.flink.streaming.api.functions.windowing.ProcessWindowFunction;
import org.apache.flink.streaming.api.windowing.assigners.TumblingEventTimeWindows;
import org.apache.flink.streaming.api.windowing.windows.TimeWindow;
import org.apache.flink.util.Collector;
import org.apache.flink.api.java.tuple.Tuple3;
import java.time.Duration;

public class Bench {
    /** Turns subtask s's contiguous range of fromSequence into W2's strided order s, s+p, ... */
    static class Stride extends RichMapFunction<Long, Long> {
        final long n; final int p; long start; int s;
        Stride(long n, int p) { this.n = n; this.p = p; }
        @Override public void open(OpenContext ctx) {
            s = getRuntimeContext().getTaskInfo().getIndexOfThisSubtask();
            start = s * n / p;
        }
        @Override public Long map(Long i) { return s + (i - start) * p; }
    }
    static class CountAgg implements AggregateFunction<Long, Long, Long> {
        public Long createAccumulator() { return 0L; }
        public Long add(Long v, Long acc) { return acc + 1; }
        public Long getResult(Long acc) { return acc; }
        public Long merge(Long a, Long b) { return a + b; }
    }
    static class Emit extends ProcessWindowFunction<Long, Tuple3<Long, Long, Long>, Long, TimeWindow> {
        public void process(Long key, Context ctx, Iterable<Long> counts, Collector<Tuple3<Long, Long, Long>> out) {
            for (Long c : counts) out.collect(Tuple3.of(key, ctx.window().getStart(), c));
        }
    }
    public static void main(String[] a) throws Exception {
        String w = a[0]; long n = Long.parseLong(a[1]); int p = Integer.parseInt(a[2]);
        Configuration conf = new Configuration();
        if (w.equals("w3")) {
            conf.setString("state.checkpoints.dir", "file:///tmp/flink-w3-checkpoints");
            conf.setString("execution.checkpointing.storage", "filesystem");
            conf.setString("execution.checkpointing.dir", "file:///tmp/flink-w3-checkpoints");
        }
        StreamExecutionEnvironment env = StreamExecutionEnvironment.createLocalEnvironment(p, conf);
        env.getConfig().enableObjectReuse();
        if (w.equals("w3")) env.enableCheckpointing(1000);
        long t0 = System.nanoTime();
        if (w.equals("w1")) {
            env.fromSequence(0, n - 1).map(v -> v * 2 + 1).filter(v -> v % 3 != 0).sinkTo(new DiscardingSink<>());
        } else {
            env.fromSequence(0, n - 1)
               .map(new Stride(n, p))
               .assignTimestampsAndWatermarks(WatermarkStrategy.<Long>forMonotonousTimestamps().withTimestampAssigner((v, t) -> v))
               .keyBy(v -> Long.remainderUnsigned(v * 2654435761L, 10000L))
               .window(TumblingEventTimeWindows.of(Duration.ofMillis(1000)))
               .aggregate(new CountAgg(), new Emit())
               .sinkTo(new DiscardingSink<>());
        }
        env.execute(w);
        double secs = (System.nanoTime() - t0) / 1e9;
        System.out.printf("RESULT workload=flink-%s n=%d p=%d secs=%.3f rate=%.0f%n", w, n, p, secs, n / secs);
    }
}
