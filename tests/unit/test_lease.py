from haagent.decide.lease import LeaseClock


def test_deadline_is_send_time_plus_ttl_minus_margin():
    c = LeaseClock(ttl=5, margin=1.5)
    c.acknowledged(1, sent_at=100.0, granted_ttl=5)
    assert c.deadline == 103.5
    assert c.valid(103.4)
    assert not c.valid(103.5)


def test_out_of_order_ack_never_moves_deadline_back():
    c = LeaseClock(ttl=5, margin=1)
    c.acknowledged(1, sent_at=200.0, granted_ttl=5)
    c.acknowledged(1, sent_at=150.0, granted_ttl=5)
    assert c.deadline == 204.0


def test_granted_ttl_is_what_counts():
    c = LeaseClock(ttl=5, margin=1)
    c.acknowledged(1, sent_at=0.0, granted_ttl=3)
    assert c.deadline == 2.0


def test_new_lease_resets_and_forget_invalidates():
    c = LeaseClock(ttl=5, margin=1)
    c.acknowledged(1, sent_at=200.0, granted_ttl=5)
    c.acknowledged(2, sent_at=10.0, granted_ttl=5)
    assert c.lease_id == 2 and c.deadline == 14.0
    c.forget()
    assert not c.valid(0.0) and c.remaining(0.0) is None


def test_address_lifetime_expires_before_etcd_can():
    c = LeaseClock(ttl=5, margin=1.5)
    assert c.address_lifetime(0.0) is None
    c.acknowledged(1, sent_at=100.0, granted_ttl=5)  # etcd expiry no earlier than 105.0
    lifetime = c.address_lifetime(100.01)
    assert lifetime == 3
    # Even if the kernel is a whole second late, the address is gone by etcd's expiry.
    assert 100.01 + lifetime + 1.0 <= 105.0


def test_address_lifetime_never_below_one_second():
    c = LeaseClock(ttl=2, margin=0.5)
    c.acknowledged(1, sent_at=0.0, granted_ttl=2)
    assert c.address_lifetime(1.4) == 1
