//! Two ends of a real TCP connection on loopback, in one test process: batches and control
//! messages arrive in order, decoded, on the right channel of the consumer's inbox; credits
//! bound what a producer sends ahead of a slow consumer; handshakes without the secret or
//! of another attempt are refused. Each runs plain and over TLS (a CA and a certificate for
//! 127.0.0.1 made for the test), where a dialer that trusts another CA is refused too.

use sluice_dataflow::snapshot::Barrier;
use sluice_dataflow::{ChannelCredits, Credit, Ending, Envelope, Message};
use sluice_net::{ChannelId, Connection, Decoder, HandshakeError, Identity, Tls};
use sluice_types::Record;
use std::net::TcpListener;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Duration;

fn identity(secret: &str, attempt: u64, process: u32) -> Identity {
    Identity { secret: Arc::from(secret.as_bytes()), job: "loopback".into(), attempt, process, graph: 7 }
}

fn decoder() -> Decoder {
    |bytes: &[u8]| {
        let batch: Vec<Record<u64>> = sluice_state::codec::decode(bytes, "test batch").map_err(|e| e.to_string())?;
        Ok(Box::new(batch) as Box<dyn std::any::Any + Send>)
    }
}

fn tls() -> Tls {
    Tls::new(&sluice_net::tls::generate(&["127.0.0.1"]).unwrap()).unwrap()
}

/// Process 0 accepts, process 1 dials: returns (acceptor's end, dialer's end).
fn pair(acceptor: Identity, dialer: Identity, tls: Option<&Tls>) -> (Arc<Connection>, Arc<Connection>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server_tls = tls.cloned();
    let accepting = std::thread::spawn(move || {
        Connection::accept_all(&listener, &acceptor, server_tls.as_ref(), &[1], Duration::from_secs(10))
    });
    let dialed = Connection::dial(&dialer, tls, 0, addr, Duration::from_secs(10)).unwrap();
    let mut accepted = accepting.join().unwrap().unwrap();
    (accepted.remove(&1).unwrap(), dialed)
}

fn values(envelope: Envelope) -> (u32, Vec<u64>) {
    match envelope.message {
        Message::Data(batch) => {
            let batch = batch.downcast::<Vec<Record<u64>>>().unwrap();
            (envelope.channel, batch.iter().map(|r| r.value).collect())
        }
        other => panic!("expected data, got {other:?}"),
    }
}

#[test]
fn batches_and_control_messages_arrive_in_order_on_their_channels() {
    batches_and_control_messages_arrive_in_order_on_their_channels_over(None);
    batches_and_control_messages_arrive_in_order_on_their_channels_over(Some(&tls()));
}

fn batches_and_control_messages_arrive_in_order_on_their_channels_over(tls: Option<&Tls>) {
    let (consumer_end, producer_end) = pair(identity("s3cret", 1, 0), identity("s3cret", 1, 1), tls);
    let (inbox, received) = sync_channel(16);
    let (a, b) = (ChannelId { node: 3, subtask: 0, channel: 0 }, ChannelId { node: 3, subtask: 0, channel: 1 });
    consumer_end.expect_inbound(a, inbox.clone(), 0, decoder());
    consumer_end.expect_inbound(b, inbox, 1, decoder());
    let (credit_a, credit_b) = (Credit::new(4), Credit::new(4));
    let to_a = producer_end.remote_channel(a, credit_a.clone());
    let to_b = producer_end.remote_channel(b, credit_b.clone());
    let reader = consumer_end.start_reading(|e| panic!("{e}")).unwrap();
    let producer_reader = producer_end.start_reading(|e| panic!("{e}")).unwrap();

    let batch = |range: std::ops::Range<u64>| {
        sluice_state::codec::encode(&range.map(|i| Record::new(i, i as i64)).collect::<Vec<_>>())
    };
    credit_a.acquire().unwrap();
    to_a.send_data(batch(0..3)).unwrap();
    to_b.send_control(&Message::Watermark(7)).unwrap();
    credit_b.acquire().unwrap();
    to_b.send_data(batch(10..12)).unwrap();
    to_a.send_control(&Message::Barrier(Barrier { id: 5, timestamp: 9 })).unwrap();
    to_a.send_control(&Message::End(Ending::Stopped)).unwrap();

    assert_eq!(values(received.recv_timeout(Duration::from_secs(10)).unwrap()), (0, vec![0, 1, 2]));
    let watermark = received.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(matches!((watermark.channel, watermark.message), (1, Message::Watermark(7))));
    assert_eq!(values(received.recv_timeout(Duration::from_secs(10)).unwrap()), (1, vec![10, 11]));
    let barrier = received.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(matches!((barrier.channel, barrier.message), (0, Message::Barrier(Barrier { id: 5, timestamp: 9 }))));
    let end = received.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(matches!((end.channel, end.message), (0, Message::End(Ending::Stopped))));

    // The consumer processed channel 0's batch: its credit travels back to the producer.
    assert_eq!(credit_a.available(), 3);
    consumer_end.credit_return(a).release();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while credit_a.available() != 4 {
        assert!(std::time::Instant::now() < deadline, "the credit did not come back");
        std::thread::sleep(Duration::from_millis(5));
    }
    producer_end.close();
    consumer_end.close();
    assert_eq!(reader.join().unwrap(), Ok(()), "a clean close ends the reader");
    assert_eq!(producer_reader.join().unwrap(), Ok(()));
}

#[test]
fn a_slow_consumer_stops_its_producer_after_its_credits() {
    a_slow_consumer_stops_its_producer_after_its_credits_over(None);
    a_slow_consumer_stops_its_producer_after_its_credits_over(Some(&tls()));
}

fn a_slow_consumer_stops_its_producer_after_its_credits_over(tls: Option<&Tls>) {
    let (consumer_end, producer_end) = pair(identity("k", 2, 0), identity("k", 2, 1), tls);
    let (inbox, received) = sync_channel(64);
    let id = ChannelId { node: 1, subtask: 0, channel: 0 };
    consumer_end.expect_inbound(id, inbox, 0, decoder());
    let credit = Credit::new(2);
    let channel = producer_end.remote_channel(id, credit.clone());
    let _reader = consumer_end.start_reading(|e| panic!("{e}")).unwrap();
    let _producer_reader = producer_end.start_reading(|e| panic!("{e}")).unwrap();
    let credits = ChannelCredits(vec![consumer_end.credit_return(id)]);

    let producer = std::thread::spawn(move || {
        for i in 0..10u64 {
            credit.acquire().unwrap();
            channel.send_data(sluice_state::codec::encode(&vec![Record::new(i, 0)])).unwrap();
        }
    });
    // Two batches arrive; the consumer processes none, so no third comes within 200 ms
    // (nor ever: the wait only bounds how long the test looks).
    for _ in 0..2 {
        received.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    assert!(received.recv_timeout(Duration::from_millis(200)).is_err(), "a batch was sent without credit");
    assert!(!producer.is_finished());
    // Processing gives credits back; the rest arrives, in order.
    credits.release(0);
    credits.release(0);
    let mut rest = Vec::new();
    while rest.len() < 8 {
        let (_, v) = values(received.recv_timeout(Duration::from_secs(10)).unwrap());
        rest.extend(v);
        credits.release(0);
    }
    assert_eq!(rest, (2..10).collect::<Vec<_>>());
    producer.join().unwrap();
}

#[test]
fn a_wrong_secret_an_older_attempt_another_graph_or_another_tls_authority_is_refused() {
    let other_graph = Identity { graph: 8, ..identity("right", 3, 1) };
    let (tls, foreign) = (tls(), tls());
    // (dialer, what the refusal says, the acceptor's TLS, the dialer's TLS)
    let refusals = [
        (identity("wrong", 3, 1), "secret", None, None),
        (identity("right", 2, 1), "attempt 2", None, None),
        (other_graph.clone(), "another job graph", None, None),
        (identity("wrong", 3, 1), "secret", Some(&tls), Some(&tls)),
        (other_graph, "another job graph", Some(&tls), Some(&tls)),
        // A dialer that trusts another authority, and one that does not speak TLS.
        (identity("right", 3, 1), "TLS handshake refused", Some(&tls), Some(&foreign)),
        (identity("right", 3, 1), "handshake", Some(&tls), None),
    ];
    for (dialer, expect, server_tls, client_tls) in refusals {
        // Sluice's own handshake refuses when both ends agree on TLS; otherwise TLS or the
        // connection does.
        let ours = server_tls.is_some() == client_tls.is_some() && !expect.contains("TLS");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = identity("right", 3, 0);
        let server_tls = server_tls.cloned();
        let accepting = std::thread::spawn(move || {
            Connection::accept_all(&listener, &acceptor, server_tls.as_ref(), &[1], Duration::from_millis(1500))
        });
        let error = Connection::dial(&dialer, client_tls, 0, addr, Duration::from_secs(5)).unwrap_err();
        let message = error.to_string();
        assert!(message.contains(expect), "{message}");
        if ours {
            assert!(matches!(
                error,
                sluice_net::ConnectError::Handshake {
                    source: HandshakeError::WrongSecret(_) | HandshakeError::Refused(_),
                    ..
                }
            ));
        }
        // The refused dialer does not count as connected.
        let accepted = accepting.join().unwrap();
        assert!(accepted.unwrap_err().contains("did not connect"));
    }
}

#[test]
fn a_vanished_peer_fails_the_connection_and_the_producers_waiting_for_credit() {
    a_vanished_peer_fails_the_connection_and_the_producers_waiting_for_credit_over(None);
    a_vanished_peer_fails_the_connection_and_the_producers_waiting_for_credit_over(Some(&tls()));
}

fn a_vanished_peer_fails_the_connection_and_the_producers_waiting_for_credit_over(tls: Option<&Tls>) {
    let (consumer_end, producer_end) = pair(identity("x", 1, 0), identity("x", 1, 1), tls);
    let id = ChannelId { node: 1, subtask: 0, channel: 0 };
    let credit = Credit::new(1);
    let _channel = producer_end.remote_channel(id, credit.clone());
    let (failed_tx, failed) = std::sync::mpsc::channel();
    let producer_reader = producer_end.start_reading(move |e| failed_tx.send(e).unwrap()).unwrap();
    credit.acquire().unwrap();
    let waiting = {
        let credit = credit.clone();
        std::thread::spawn(move || credit.acquire())
    };
    // The consumer's process vanishes: its socket closes without a goodbye.
    drop(consumer_end);
    let reason = failed.recv_timeout(Duration::from_secs(10)).expect("the failure is reported");
    assert!(reason.contains("stopped or was killed"), "{reason}");
    assert!(producer_reader.join().unwrap().is_err());
    assert!(matches!(waiting.join().unwrap(), Err(sluice_dataflow::TaskError::Disconnected)));
}
