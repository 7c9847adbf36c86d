"""The Mosquitto fixture itself: plain, password and TLS brokers, persistence across restarts."""
from __future__ import annotations

from daemon.fleet.settings import make_client, parse_mqtt
from tests.broker import Subscriber


def test_plain_broker_delivers(mosquitto):
    with Subscriber(mosquitto, "test/plain/#") as subscriber:
        mosquitto.publish("test/plain/hello", b"hi")
        messages = subscriber.wait_for(lambda received: len(received) == 1)
    assert messages[0] == ("test/plain/hello", b"hi", False)


def test_password_broker_takes_the_configured_password_only(broker_factory):
    broker = broker_factory(password=True)
    settings = parse_mqtt(broker.mqtt_section(), "door")
    assert settings.password == broker.password
    assert not broker.connack(make_client(settings)).is_failure
    wrong = broker.client()
    wrong.username_pw_set(broker.username, "not the password")
    assert broker.connack(wrong).is_failure
    anonymous = broker.client()
    anonymous.username_pw_set(None)
    assert broker.connack(anonymous).is_failure


def test_tls_broker_takes_clients_that_trust_its_ca_only(broker_factory):
    broker = broker_factory(tls=True)
    assert not broker.connack(make_client(parse_mqtt(broker.mqtt_section(), "door"))).is_failure
    plain = make_client(parse_mqtt(broker.mqtt_section(tls={"enabled": False}), "door"))
    assert broker.connack(plain) is None


def test_retained_message_survives_stop_and_start(broker_factory):
    broker = broker_factory()
    broker.publish("test/retained", b"kept", retain=True)
    broker.stop()
    broker.start()
    with Subscriber(broker, "test/retained") as subscriber:
        assert subscriber.wait_for(lambda received: received)[0] == ("test/retained", b"kept", True)


def test_persistent_subscriber_gets_what_was_published_while_it_was_away(broker_factory):
    broker = broker_factory()
    subscriber = Subscriber(broker, "test/queued", client_id="test-persistent", clean_session=False).connect()
    subscriber.disconnect()
    broker.publish("test/queued", b"while away")
    broker.restart()  # the queued message is in the saved session
    subscriber.connect()
    subscriber.wait_for(lambda received: [m.payload for m in received] == [b"while away"])
    broker.restart()  # paho reconnects by itself; the session still holds the subscription
    broker.publish("test/queued", b"after restart")
    subscriber.wait_for(lambda received: [m.payload for m in received] == [b"while away", b"after restart"])
    subscriber.disconnect()
