//! The review suites, one module each (`review_a` …): adversarial and gap-finding
//! reviews of the cache, each module's doc comment saying what it tries. They share one
//! test binary, so the helpers in `tests/support` are built once and one binary is linked
//! instead of one per review; run one review with `cargo test --test reviews review_sa::`.
//! Reviews that need a process of their own (a global metrics recorder or tracing
//! subscriber, or a measure of this process's memory) stay separate test files.

#[macro_use]
#[path = "../support/mod.rs"]
mod support;

mod review_a;
mod review_aa;
mod review_b;
mod review_bb;
mod review_c;
mod review_d;
mod review_dd;
mod review_e;
mod review_f;
mod review_ff;
mod review_gg;
mod review_h;
mod review_hh;
mod review_i;
mod review_ia;
mod review_ii;
mod review_j;
mod review_jj;
mod review_kk;
mod review_l;
mod review_ll;
mod review_m;
mod review_mm;
mod review_n;
mod review_nn;
mod review_o;
mod review_oo;
mod review_p;
mod review_pa;
mod review_pp;
mod review_q;
mod review_qa;
mod review_qb;
mod review_qc;
mod review_qe;
mod review_qf;
mod review_qg;
mod review_qh;
mod review_qk;
mod review_ql;
mod review_qn;
mod review_qo;
mod review_qp;
mod review_qq;
mod review_qr;
mod review_qs;
mod review_qt;
mod review_qu;
mod review_qv;
mod review_qw;
mod review_qx;
mod review_qy;
mod review_qz;
mod review_r;
mod review_ra;
mod review_rb;
mod review_rc;
mod review_rd;
mod review_re;
mod review_rf;
mod review_rg;
mod review_rh;
mod review_ri;
mod review_rj;
mod review_rk;
mod review_rl;
mod review_rm;
mod review_rn;
mod review_ro;
mod review_rp;
mod review_rq;
mod review_rr;
mod review_rs;
mod review_rt;
mod review_rv;
mod review_rw;
mod review_rx;
mod review_ry;
mod review_rz;
mod review_s;
mod review_sa;
mod review_sb;
mod review_sc;
mod review_sd;
mod review_se;
mod review_sf;
mod review_sg;
mod review_sh;
mod review_si;
mod review_ss;
mod review_t;
mod review_tt;
mod review_u;
mod review_vv;
mod review_x;
mod review_y;
mod review_z;
