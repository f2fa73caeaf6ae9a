//! Review SM: an adversarial second look at review SL (a clock set back while the process
//! runs), as an operator running several processes on one memcached namespace whose
//! clocks are skewed or stepped (NTP corrections, VM resumes), and as an attacker who can
//! time requests: generation stamps that restart from the clock, tag purge times compared
//! with requests' times across a step (and the one second SL tolerates), the near tier's
//! check of entries received ahead, the refusal of fills sent before a step, and the
//! other places that mix the wall clock with the monotonic one.
//!
//! The defect found (this process's own tag purges ordered with its requests by the wall
//! clock with no margin, which a step back of less than a second reorders) needs a clock
//! this process can move, so its tests are unit tests beside the code:
//! `cache::storage::store::tests::a_tag_purged_here_after_a_small_set_back_refuses_a_fill_sent_before_it`
//! and
//! `cache::storage::store::tests::a_shared_response_is_cut_off_at_its_request_by_a_tag_purged_here_after_a_small_set_back`.
//! Here, what other hosts write, crafted as they would write it: each test fails if the
//! behaviour it names regresses.

mod support;
