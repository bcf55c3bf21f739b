import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.typeinfo.TypeHint;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.connector.kafka.sink.KafkaSink;
import org.apache.flink.connector.kafka.source.KafkaSource;
import org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.streaming.api.CheckpointingMode;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.util.Collector;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.producer.ProducerRecord;

/** K1 on Flink: Kafka (bounded at the latest offsets) -> upper-case the value -> Kafka,
 *  exactly-once, checkpoints every second. Args: bootstrap input output parallelism. */
public class K1 {
    public static void main(String[] a) throws Exception {
        String bootstrap = a[0], input = a[1], output = a[2];
        int p = Integer.parseInt(a[3]);
        Configuration conf = new Configuration();
        conf.setString("execution.checkpointing.dir", "file:///tmp/flink-k1-checkpoints");
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment(conf);
        env.setParallelism(p);
        env.getConfig().enableObjectReuse();
        env.enableCheckpointing(1000, CheckpointingMode.EXACTLY_ONCE);
        TypeInformation<Tuple2<byte[], byte[]>> type = TypeInformation.of(new TypeHint<Tuple2<byte[], byte[]>>() {});
        KafkaSource<Tuple2<byte[], byte[]>> source = KafkaSource.<Tuple2<byte[], byte[]>>builder()
            .setBootstrapServers(bootstrap)
            .setTopics(input)
            .setGroupId("flink-k1")
            .setStartingOffsets(OffsetsInitializer.earliest())
            .setBounded(OffsetsInitializer.latest())
            .setDeserializer(new KafkaRecordDeserializationSchema<Tuple2<byte[], byte[]>>() {
                public void deserialize(ConsumerRecord<byte[], byte[]> r, Collector<Tuple2<byte[], byte[]>> out) {
                    out.collect(Tuple2.of(r.key(), r.value()));
                }
                public TypeInformation<Tuple2<byte[], byte[]>> getProducedType() { return type; }
            })
            .build();
        KafkaSink<Tuple2<byte[], byte[]>> sink = KafkaSink.<Tuple2<byte[], byte[]>>builder()
            .setBootstrapServers(bootstrap)
            .setRecordSerializer((KafkaRecordSerializationSchema<Tuple2<byte[], byte[]>>) (t, ctx, ts) ->
                new ProducerRecord<>(output, t.f0, t.f1))
            .setDeliveryGuarantee(DeliveryGuarantee.EXACTLY_ONCE)
            .setTransactionalIdPrefix("flink-k1-" + System.currentTimeMillis())
            .setProperty("transaction.timeout.ms", "900000")
            .build();
        long started = System.nanoTime();
        env.fromSource(source, WatermarkStrategy.noWatermarks(), "kafka")
            .map(t -> {
                byte[] v = t.f1.clone();
                for (int i = 0; i < v.length; i++) if (v[i] >= 'a' && v[i] <= 'z') v[i] -= 32;
                return Tuple2.of(t.f0, v);
            }).returns(type)
            .sinkTo(sink);
        env.execute("k1");
        double secs = (System.nanoTime() - started) / 1e9;
        System.out.printf("ELAPSED secs=%.3f%n", secs);
    }
}
