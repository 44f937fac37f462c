"""The per-VIP election, driven through every transition without etcd or netlink."""

from haagent.cluster.schema import Holder
from haagent.decide.election import Bind, Campaign, Election, Resign, State, Unbind

ME = "h1"
LEASE = 0xA1


def mine(rev: int = 10) -> Holder:
    return Holder(node=ME, lease=LEASE, create_revision=rev)


def other(node: str = "h2", rev: int = 7) -> Holder:
    return Holder(node=node, lease=0xB2, create_revision=rev)


def holding() -> Election:
    e = Election("db", ME)
    e.observe(None, 5)
    e.lease_valid(LEASE)
    e.campaign_won(mine())
    assert e.state is State.HOLDER
    return e


def test_no_lease_no_campaign():
    e = Election("db", ME)
    assert e.observe(None, 3) == []
    assert e.state is State.IDLE


def test_campaigns_when_key_absent_with_epoch_of_observed_absence():
    e = Election("db", ME)
    e.observe(None, 42)
    acts = e.lease_valid(LEASE)
    assert acts == [Campaign("db", 42, "lease valid")]
    assert e.state is State.CAMPAIGNING


def test_waits_while_someone_else_holds():
    e = Election("db", ME)
    e.observe(other(), 5)
    assert e.lease_valid(LEASE) == []
    assert e.state is State.CANDIDATE


def test_campaigns_on_release_seen_by_watch():
    e = Election("db", ME)
    e.observe(other(), 5)
    e.lease_valid(LEASE)
    acts = e.observe(None, 9)
    assert acts == [Campaign("db", 9, "key absent")]


def test_won_campaign_binds():
    e = Election("db", ME)
    e.observe(None, 5)
    e.lease_valid(LEASE)
    # The log line's reason is the holder record's: why the campaign was made.
    assert e.campaign_won(mine()) == [Bind("db", "lease valid; campaign won")]
    assert e.state is State.HOLDER


def test_lost_campaign_waits_for_the_winner():
    e = Election("db", ME)
    e.observe(None, 5)
    e.lease_valid(LEASE)
    assert e.campaign_lost(other(), 6) == []
    assert e.state is State.CANDIDATE
    assert e.holder == other()


def test_watch_events_during_campaign_do_not_start_a_second_one():
    e = Election("db", ME)
    e.observe(None, 5)
    e.lease_valid(LEASE)
    assert e.observe(None, 6) == []
    assert e.observe(other(), 7) == []
    assert e.state is State.CAMPAIGNING


def test_own_put_event_while_holding_is_quiet():
    e = holding()
    assert e.observe(mine(), 11) == []
    assert e.state is State.HOLDER


def test_lease_lost_unbinds_and_goes_idle():
    e = holding()
    acts = e.lease_lost("lease deadline passed")
    assert acts == [Unbind("db", "lease deadline passed")]
    assert e.state is State.IDLE


def test_key_deleted_under_holder_unbinds_then_campaigns_again():
    e = holding()
    acts = e.observe(None, 20)
    assert acts == [Unbind("db", "holder key deleted"), Campaign("db", 20, "key absent")]


def test_key_taken_by_other_unbinds():
    e = holding()
    acts = e.observe(other(rev=30), 30)
    assert acts == [Unbind("db", "key now held by h2")]
    assert e.state is State.CANDIDATE


def test_ineligible_holder_unbinds_before_resigning():
    e = holding()
    acts = e.set_eligible(False, "check tcp-5432 failed")
    assert acts == [
        Unbind("db", "check tcp-5432 failed"),
        Resign("db", 10, "check tcp-5432 failed"),
    ]
    assert e.state is State.IDLE
    # Repeated facts do not resign twice for the same key.
    assert e.set_eligible(False, "still failing") == []


def test_ineligible_node_does_not_campaign_and_resumes_when_eligible():
    e = Election("db", ME)
    e.set_eligible(False, "unhealthy")
    e.observe(None, 5)
    assert e.lease_valid(LEASE) == []
    assert e.state is State.IDLE
    assert e.set_eligible(True, "healthy") == [Campaign("db", 5, "healthy")]


def test_shutdown_unbinds_without_resign():
    e = holding()
    assert e.shutdown() == [Unbind("db", "shutdown")]
    assert e.state is State.IDLE
    assert e.observe(None, 50) == []


def test_restart_adopts_own_key_on_adopted_lease():
    e = Election("db", ME)
    e.observe(mine(), 8)
    assert e.lease_valid(LEASE, "own key found") == [Bind("db", "own key found")]
    assert e.state is State.HOLDER


def test_key_of_an_earlier_run_on_another_lease_is_not_mine():
    e = Election("db", ME)
    e.observe(Holder(node=ME, lease=0xDEAD, create_revision=3), 8)
    assert e.lease_valid(LEASE) == []
    assert e.state is State.CANDIDATE


def test_failed_campaign_waits_for_retry_or_watch():
    e = Election("db", ME)
    e.observe(None, 5)
    e.lease_valid(LEASE)
    assert e.campaign_failed("timeout") == []
    assert e.state is State.CANDIDATE
    # An unanswered transaction may have created our key: the watch shows it, we adopt it.
    assert e.observe(mine(12), 12) == [Bind("db", "held by h1")]


def test_retry_campaigns_again():
    e = Election("db", ME)
    e.observe(None, 5)
    e.lease_valid(LEASE)
    e.campaign_failed("timeout")
    assert e.observe(None, 6) == []
    assert e.retry() == [Campaign("db", 6, "retry after failed campaign")]


def test_campaign_answer_after_lease_loss_is_not_acted_on():
    e = Election("db", ME)
    e.observe(None, 5)
    e.lease_valid(LEASE)
    e.lease_lost("lease deadline passed")
    assert e.campaign_won(mine()) == []
    assert e.state is State.IDLE


def test_campaign_answer_after_becoming_ineligible_resigns():
    e = Election("db", ME)
    e.observe(None, 5)
    e.lease_valid(LEASE)
    e.set_eligible(False, "unhealthy")
    assert e.state is State.CAMPAIGNING
    assert e.campaign_won(mine()) == [Resign("db", 10, "unhealthy")]


def test_own_key_on_an_earlier_lease_is_not_called_someone_elses():
    e = holding()
    acts = e.observe(Holder(node=ME, lease=0xA0, create_revision=30), 31)
    assert acts == [Unbind("db", "key held by this node's earlier lease a0")]
