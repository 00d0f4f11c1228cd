//! The admin web UI in a real browser: headless Chromium through
//! ChromeDriver, against an in-process cluster (a CCM and agents on
//! 127.0.0.1, as `cmover demo` runs them). An admin logs in, creates a site
//! and a content group, publishes and watches the run commit with every
//! server green, edits staging and publishes again, rolls back; a failed
//! login and a bad cron expression show their errors where they belong;
//! the page follows the CCM's state within 2 s through Server-Sent Events.
//! Every test saves screenshots under `target/ui-screenshots/` and asserts
//! the browser's console stayed free of errors.

use std::path::Path;
use std::time::{Duration, Instant};

use cmover::local_cluster::{ClusterOptions, LocalCluster};
use cmover::storage::records::{Quorum, RunState};
use fantoccini::key::Key;
use serde_json::json;

mod common;

use common::browser::Browser;
use common::cluster::{init_logs, LIMIT};
use common::wait::wait_every;

const USER: &str = "ada";
const PASSWORD: &str = "correct horse battery";

fn write_site(staging: &Path, release: &str) {
    std::fs::create_dir_all(staging).unwrap();
    std::fs::write(staging.join("index.html"), format!("<h1>release {release}</h1>\n")).unwrap();
    std::fs::write(staging.join("about.html"), "about us\n").unwrap();
}

/// A browser, and a cluster of `segments` × `per_segment` agents with an
/// admin account; staging (release 1) in `staging`. `None`: skipped.
struct Setup {
    b: Browser,
    c: LocalCluster,
    staging: std::path::PathBuf,
    _tmp: tempfile::TempDir,
}

async fn setup(test: &str, segments: usize, per_segment: usize) -> Option<Setup> {
    init_logs();
    let b = Browser::start(test).await?;
    let tmp = tempfile::tempdir().unwrap();
    let staging = tmp.path().join("staging");
    write_site(&staging, "1");
    let mut opts = ClusterOptions::new(&tmp.path().join("cluster"), segments, per_segment);
    // One leader served by the CCM, the next by that leader: the tree shows it.
    opts.fanout = 1;
    let c = LocalCluster::start(opts).await.unwrap();
    c.wait_segments(LIMIT).await.unwrap();
    c.admin.ok("POST", "/api/v1/users", Some(json!({ "name": USER, "password": PASSWORD }))).await.unwrap();
    Some(Setup { b, c, staging, _tmp: tmp })
}

impl Setup {
    /// Asserts a console free of errors (but `allowed`), then stops everything.
    async fn finish(self, allowed: &[&str]) {
        self.b.assert_no_console_errors(allowed).await;
        self.b.close().await;
        self.c.stop().await;
    }
}

/// Logs in through the form (submitted with the Enter key) and waits for the overview.
async fn login(b: &Browser, url: &str) {
    b.goto(&format!("{url}/")).await;
    b.fill("#login-form [name=user]", USER).await;
    b.fill("#login-form [name=password]", PASSWORD).await;
    let enter = Key::Enter.to_string();
    b.on("#login-form [name=password]", |e| {
        let enter = enter.clone();
        async move { e.send_keys(&enter).await }
    })
    .await;
    b.find("#overview").await;
    b.until("the live overview", "document.querySelector('#live').dataset.state === 'live'").await;
}

/// Every visible form control has a label (its own or `aria-label`).
async fn assert_labelled(b: &Browser, page: &str) {
    let unlabelled = b
        .eval(
            "[...document.querySelectorAll('main input, main select, main textarea')]
              .filter(e => e.offsetParent !== null && e.labels.length === 0 && !e.getAttribute('aria-label'))
              .map(e => e.outerHTML)",
        )
        .await;
    assert_eq!(unlabelled, json!([]), "{page}: controls without a label");
}

/// Opens a run's page (after "Run now") and waits for it to end; answers its state.
async fn run_page_result(b: &Browser) -> String {
    b.find("#run-state").await;
    let state = b
        .until(
            "the run to end",
            "['committed','failed','cancelled','unchanged'].find(s => document.querySelector('#run-state')?.dataset.state === s)",
        )
        .await;
    state.as_str().unwrap().to_owned()
}

/// On a run's page: the run commits, every one of the 4 servers is green,
/// and each serves `release` of the test site.
async fn run_committed_everywhere(b: &Browser, c: &LocalCluster, release: &str) {
    assert_eq!(run_page_result(b).await, "committed");
    assert_every_server_green(b, 4).await;
    for id in c.ids() {
        let live = std::fs::read_to_string(c.live_dir(id, "www").join("index.html")).unwrap();
        assert!(live.contains(&format!("release {release}")), "server {id}: {live}");
    }
}

async fn assert_every_server_green(b: &Browser, servers: usize) {
    let outcomes = b
        .until(
            "every server's result",
            &format!(
                "(() => {{ const r = [...document.querySelectorAll('#run-servers tr[data-server]')].map(t => t.dataset.outcome);
                   return r.length === {servers} && r.every(o => o === 'ok') ? r : null; }})()"
            ),
        )
        .await;
    assert_eq!(outcomes.as_array().unwrap().len(), servers);
}

#[actix_rt::test]
async fn an_admin_publishes_edits_and_rolls_back_through_the_ui() {
    let Some(mut t) = setup("publish", 2, 2).await else { return };
    let (b, c, staging) = (&mut t.b, &t.c, t.staging.clone());
    let url = c.url();
    login(b, &url).await;
    b.until("4 servers in 2 segments", "document.querySelectorAll('[data-segment] .server').length === 4")
        .await;
    b.shot("overview-before").await;

    // A site and a content group, through the forms.
    b.goto(&format!("{url}/#/sites")).await;
    b.fill("#site-form [name=name]", "www").await;
    b.fill("#site-form [name=staging]", staging.to_str().unwrap()).await;
    b.click("#site-form button[type=submit]").await;
    b.find("#sites-table tr[data-site=www]").await;
    b.until(
        "all 4 servers highlighted as new",
        "document.querySelectorAll('#servers-table tr.new').length === 4",
    )
    .await;
    b.shot("sites-new-servers").await;
    assert_labelled(b, "sites").await;
    b.fill("#group-form [name=name]", "web").await;
    b.until(
        "the site in the group form",
        "document.querySelector('#group-form [name=site]').value === 'www'",
    )
    .await;
    for i in 1..=4 {
        b.click(&format!("#group-form .checks label:nth-child({i}) input")).await;
    }
    b.click("#group-form button[type=submit]").await;
    b.find("#groups-table tr[data-group=web]").await;
    b.until("no server new any more", "document.querySelectorAll('#servers-table tr.new').length === 0")
        .await;
    let group = c.admin.ok("GET", "/api/v1/groups/web", None).await.unwrap();
    assert_eq!(group["servers"].as_array().unwrap().len(), 4, "{group}");

    // A publish job, through the form; run it and watch the run.
    b.goto(&format!("{url}/#/jobs")).await;
    b.click("#new-job").await;
    b.fill("#job-form [name=name]", "publish web").await;
    b.until("the group in the job form", "document.querySelector('#job-form [name=group]').value === 'web'")
        .await;
    assert_labelled(b, "job form").await;
    b.click("#job-save").await;
    b.find("#jobs-table tr[data-job] [data-action=run]").await;
    b.click("#jobs-table tr[data-job] [data-action=run]").await;
    run_committed_everywhere(b, c, "1").await;
    b.until(
        "the distribution tree",
        "document.querySelectorAll('#run svg [data-tree-segment]').length === 2",
    )
    .await;
    let relayed =
        b.eval("[...document.querySelectorAll('#segments-table tr[data-segment]')].map(r => r.cells[3].textContent)").await;
    let relayed_by_leader =
        relayed.as_array().unwrap().iter().any(|f| f.as_str().unwrap().starts_with("web-"));
    assert!(relayed_by_leader, "one leader fetched from another: {relayed}");
    b.until("the phase timeline", "document.querySelectorAll('#timeline [data-phase]').length >= 3").await;
    b.shot("run-committed").await;
    b.goto(&format!("{url}/#/")).await;
    b.until(
        "every server online with release 1",
        "[...document.querySelectorAll('.server')].every(s => s.dataset.state === 'online' && s.textContent.includes('www: 1'))",
    )
    .await;
    b.shot("overview-release-1").await;

    // Staging changes; publish again from the jobs list.
    write_site(&staging, "2");
    b.goto(&format!("{url}/#/jobs")).await;
    b.click("#jobs-table tr[data-job] [data-action=run]").await;
    run_committed_everywhere(b, c, "2").await;

    // Roll back, confirmed in the dialog.
    b.goto(&format!("{url}/#/releases")).await;
    b.until("release 2 live", "document.querySelector('#live-release')?.textContent === '2'").await;
    b.click("#rollback").await;
    b.until("the confirmation", "document.querySelector('#confirm').open").await;
    b.shot("rollback-confirm").await;
    b.click("#confirm-ok").await;
    run_committed_everywhere(b, c, "1").await;
    b.goto(&format!("{url}/#/releases")).await;
    b.until("release 1 live again", "document.querySelector('#live-release')?.textContent === '1'").await;

    // A checkpoint of it, then staging moves on to release 3 (published
    // through the API), and the checkpoint is restored, confirmed.
    b.click("#checkpoint-create").await;
    b.find("#checkpoints-table tr[data-checkpoint]").await;
    write_site(&staging, "3");
    let publish = c.admin.ok("GET", "/api/v1/jobs", None).await.unwrap()[0]["id"].as_u64().unwrap();
    let r = c.admin.wait_run(c.admin.run_job(publish).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    b.click("#checkpoints-table tr[data-checkpoint] [data-action=restore]").await;
    b.until("the confirmation", "document.querySelector('#confirm').open").await;
    b.click("#confirm-ok").await;
    run_committed_everywhere(b, c, "1").await;

    // History, settings, and a narrow window.
    b.goto(&format!("{url}/#/events")).await;
    b.until(
        "committed events",
        "document.querySelectorAll('#events-table tr[data-kind=committed]').length >= 2",
    )
    .await;
    b.until(
        "the rollback's event",
        "document.querySelectorAll('#events-table tr[data-kind=rolled_back]').length === 1",
    )
    .await;
    b.fill("#events-filter [name=kind]", "committed").await;
    b.click("#events-filter button[type=submit]").await;
    b.until(
        "only committed events",
        "(() => { const k = [...document.querySelectorAll('#events-table tr[data-kind]')].map(r => r.dataset.kind);
           return k.length >= 2 && k.every(x => x === 'committed'); })()",
    )
    .await;
    b.goto(&format!("{url}/#/settings")).await;
    b.find("#integrations dl").await;
    b.fill("#tree-order-form [name=segments]", "seg-2\nseg-1").await;
    b.click("#tree-order-form button[type=submit]").await;
    let order = wait_every("the new tree order", LIMIT, Duration::from_millis(50), async || {
        let v = c.admin.ok("GET", "/api/v1/tree-order", None).await.unwrap();
        if v["segments"] == json!(["seg-2", "seg-1"]) {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await;
    assert_eq!(order["segments"], json!(["seg-2", "seg-1"]));
    b.client.set_window_size(400, 800).await.unwrap();
    b.goto(&format!("{url}/#/")).await;
    b.until("the overview, narrow", "document.querySelectorAll('.server').length === 4").await;
    let fits = b.eval("document.documentElement.scrollWidth <= window.innerWidth + 1").await;
    assert_eq!(fits, json!(true), "the overview scrolls sideways in a 400 px window");
    b.shot("overview-narrow").await;
    t.finish(&[]).await;
}

#[actix_rt::test]
async fn a_failed_login_and_a_bad_cron_expression_show_their_errors() {
    let Some(mut t) = setup("errors", 1, 2).await else { return };
    let (b, c, staging) = (&mut t.b, &t.c, t.staging.clone());
    c.admin.create_site("www", &staging).await.unwrap();
    c.admin.create_group("web", "www", &c.ids(), Quorum::All).await.unwrap();
    let url = c.url();

    // A wrong password: an error, and still the login form.
    b.goto(&format!("{url}/")).await;
    b.fill("#login-form [name=user]", USER).await;
    b.fill("#login-form [name=password]", "not the password").await;
    b.click("#login-submit").await;
    let error = b.until("the login error", "document.querySelector('#login-error').textContent").await;
    assert_eq!(error, json!("Wrong user name or password."));
    assert_eq!(b.eval("document.querySelector('#top').hidden").await, json!(true));
    b.shot("login-failed").await;

    // The right one; then a job with a bad cron expression.
    login(b, &url).await;
    b.goto(&format!("{url}/#/jobs/new")).await;
    b.until("the group in the job form", "document.querySelector('#job-form [name=group]').value === 'web'")
        .await;
    b.choose("#job-form [data-field='schedule.type']", "cron").await;
    b.fill("#job-form [data-field='schedule.expr']", "61 * * * *").await;
    b.click("#job-save").await;
    let shown = b
        .until("the cron error", "document.querySelector('[data-error-for=\"schedule.expr\"]').textContent")
        .await;
    // The very message of the API, beside the schedule's fields.
    let (status, api) = c
        .admin
        .call(
            "POST",
            "/api/v1/jobs",
            Some(json!({"site": "www", "group": "web", "kind": "publish", "schedule": {"type": "cron", "expr": "61 * * * *"}})),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{api}");
    assert_eq!(api["field"], "schedule.expr");
    assert_eq!(shown, api["error"], "the UI shows the API's message");
    assert!(shown.as_str().unwrap().contains("cron expression"), "{shown}");
    let beside = b
        .eval(
            "document.querySelector('[data-error-for=\"schedule.expr\"]').closest('.field')
               .contains(document.querySelector('[data-field=\"schedule.expr\"]'))",
        )
        .await;
    assert_eq!(beside, json!(true), "the message sits right under the cron field");
    b.shot("bad-cron").await;
    let jobs = c.admin.ok("GET", "/api/v1/jobs", None).await.unwrap();
    assert_eq!(jobs, json!([]), "no job was stored");
    // Only the refused calls are in the console (the browser logs every 4xx).
    t.finish(&["401", "400"]).await;
}

#[actix_rt::test]
async fn the_page_follows_the_server_within_two_seconds() {
    let Some(mut t) = setup("live", 1, 2).await else { return };
    let (b, c, staging) = (&mut t.b, &t.c, t.staging.clone());
    let url = c.url();
    login(b, &url).await;

    // Each change is made through the API, not the page; the page is then
    // polled until it shows it. Staleness = shown − acknowledged.
    let mut stale = Vec::new();
    for k in 1..=5 {
        let site = format!("s{k}");
        c.admin.create_site(&site, &staging).await.unwrap();
        let changed = Instant::now();
        b.until("the new site", &format!("document.querySelector('#overview tr[data-site=\"{site}\"]')"))
            .await;
        stale.push(changed.elapsed());
    }
    // A run, followed on its page: from the CCM's committed to the page's.
    c.admin.create_group("web", "s1", &c.ids(), Quorum::All).await.unwrap();
    let job = c.admin.create_job("s1", "web", "publish").await.unwrap();
    let run = c.admin.run_job(job).await.unwrap();
    b.goto(&format!("{url}/#/runs/{run}")).await;
    b.find("#run-state").await;
    let committed = wait_every(format!("run {run} to end"), LIMIT, Duration::from_millis(10), async || {
        let r = c.admin.run(run).await.unwrap();
        if !r.state.is_final() {
            return None;
        }
        assert_eq!(r.state, RunState::Committed, "{r:#?}");
        Some(Instant::now())
    })
    .await;
    b.until(
        "the run committed on its page",
        "document.querySelector('#run-state').dataset.state === 'committed'",
    )
    .await;
    stale.push(committed.elapsed());
    b.shot("run-live").await;

    stale.sort();
    let median = stale[stale.len() / 2];
    let worst = *stale.last().unwrap();
    eprintln!("UI staleness over {} changes: median {median:?}, worst {worst:?}", stale.len());
    assert!(worst <= Duration::from_secs(2), "the page lagged the CCM by {worst:?}: {stale:?}");
    t.finish(&[]).await;
}

/// Multicast at 1 MB/s, so that the content takes seconds to move.
fn slower_multicast(_id: u64, c: &mut cmover::config::Config) {
    c.mctp.rate = bytesize::ByteSize::mb(1);
    c.mctp.rate_max = bytesize::ByteSize::mb(1);
    c.mctp.rate_min = bytesize::ByteSize::kb(500);
}

#[actix_rt::test]
async fn the_run_page_shows_progress_while_data_moves_and_keeps_the_content_figures() {
    init_logs();
    let Some(mut b) = Browser::start("progress").await else { return };
    let tmp = tempfile::tempdir().unwrap();
    let staging = common::cluster::staging(tmp.path(), 5, 8);
    let mut opts = ClusterOptions::new(&tmp.path().join("cluster"), 2, 2);
    opts.tweak_agent = Some(slower_multicast);
    let c = LocalCluster::start(opts).await.unwrap();
    c.wait_segments(LIMIT).await.unwrap();
    c.admin.ok("POST", "/api/v1/users", Some(json!({ "name": USER, "password": PASSWORD }))).await.unwrap();
    c.admin.create_site("www", &staging).await.unwrap();
    c.admin.create_group("web", "www", &c.ids(), Quorum::All).await.unwrap();
    let job = c.admin.create_job("www", "web", "publish").await.unwrap();
    let url = c.url();
    login(&b, &url).await;
    let run = c.admin.run_job(job).await.unwrap();
    b.goto(&format!("{url}/#/runs/{run}")).await;

    // While the content moves: a segment's progress, and a member's, before anything is live.
    let seen = b
        .until(
            "progress while the content moves",
            "(() => { const live = [...document.querySelectorAll('#segments-table td[data-live]')]
                 .filter(td => td.dataset.live !== '' && Number(td.dataset.live) < 100);
               const state = document.querySelector('#run-state')?.dataset.state;
               const servers = document.querySelectorAll('#run-servers td[data-live]:not([data-live=\"\"])').length;
               return live.length && servers && state === 'distributing'
                 ? [live.map(td => td.textContent), document.querySelector('#run-took').textContent] : null; })()",
        )
        .await;
    let text = seen.to_string();
    assert!(text.contains("sending") && text.contains("%"), "{text}");
    assert!(text.contains("running for"), "{text}");
    b.shot("run-progress").await;

    // After the commit the content wave's bytes, frames and passes stay,
    // and the commit wave shows beside them.
    assert_eq!(run_page_result(&b).await, "committed");
    let rows = b
        .until(
            "the content wave's figures after the commit",
            "(() => { const rows = [...document.querySelectorAll('#segments-table tr[data-segment]')]
                 .map(r => [...r.children].map(td => td.textContent));
               return rows.length === 2 && rows.every(c => c[6].includes('MiB') && c[7].includes('/')
                 && c[8] !== '—' && c[10] === 'reported') ? rows : null; })()",
        )
        .await;
    assert_eq!(rows.as_array().unwrap().len(), 2, "{rows}");
    assert_every_server_green(&b, 4).await;
    b.shot("run-after-commit").await;
    b.assert_no_console_errors(&[]).await;
    b.close().await;
    c.stop().await;
}

#[actix_rt::test]
async fn a_job_shows_its_plan_and_runs_a_server_its_page_and_an_unknown_server_is_refused() {
    let Some(mut t) = setup("pages", 1, 2).await else { return };
    let (b, c, staging) = (&mut t.b, &t.c, t.staging.clone());
    c.admin.create_site("www", &staging).await.unwrap();
    c.admin.create_group("web", "www", &c.ids(), Quorum::All).await.unwrap();
    let job = c.admin.create_job("www", "web", "publish").await.unwrap();
    let url = c.url();
    login(b, &url).await;

    // Before it runs: what a run would send, to whom, with which quorum.
    b.goto(&format!("{url}/#/jobs/{job}")).await;
    b.until("the plan", "document.querySelector('#plan-verdict')?.dataset.runnable === 'true'").await;
    let changes = b.until("the changes", "document.querySelector('#plan-changes')?.textContent").await;
    assert!(changes.as_str().unwrap().contains("+ index.html"), "{changes}");
    assert!(changes.as_str().unwrap().contains("2 new"), "{changes}");
    assert_eq!(b.eval("document.querySelector('#plan-quorum').textContent").await, json!("≥ 2 of 2"));
    let targets = b.eval("document.querySelector('#plan-targets').textContent").await;
    assert!(
        targets.as_str().unwrap().contains("(1)") && targets.as_str().unwrap().contains("(2)"),
        "{targets}"
    );
    b.shot("job-plan").await;

    // After a run: the job lists it, and a run now would change nothing.
    let run = c.admin.run_job(job).await.unwrap();
    assert_eq!(c.admin.wait_run(run, LIMIT).await.unwrap().state, RunState::Committed);
    b.goto(&format!("{url}/#/jobs")).await;
    b.goto(&format!("{url}/#/jobs/{job}")).await;
    b.until(
        "the job's run",
        &format!("document.querySelector('#job-runs-table tr[data-run=\"{run}\"]')?.textContent.includes('committed')"),
    )
    .await;
    let verdict =
        b.until("the plan after the run", "document.querySelector('#plan-verdict')?.textContent").await;
    assert!(verdict.as_str().unwrap().contains("staging equals the live release"), "{verdict}");

    // A server's page: what it holds, its segment, its runs.
    b.goto(&format!("{url}/#/servers/2")).await;
    let held =
        b.until("the releases it holds", "document.querySelector('#server-releases')?.textContent").await;
    assert_eq!(held, json!("www: release 1"));
    b.until("its run", &format!("document.querySelector('#server-runs tr[data-run=\"{run}\"]')")).await;
    b.shot("server").await;

    // The group form: a server no leader has reported is refused beside the servers.
    b.goto(&format!("{url}/#/sites")).await;
    b.fill("#group-form [name=name]", "typo").await;
    b.until(
        "the site in the group form",
        "document.querySelector('#group-form [name=site]').value === 'www'",
    )
    .await;
    b.eval(
        "(() => { const l = document.createElement('label');
           l.innerHTML = '<input type=\"checkbox\" value=\"99\" checked> 99';
           document.querySelector('#group-form .checks').append(l);
           document.querySelector('#group-form button[type=submit]').click(); return true; })()",
    )
    .await;
    let error = b
        .until(
            "the servers error",
            "document.querySelector('#group-form [data-error-for=servers]').textContent",
        )
        .await;
    assert!(error.as_str().unwrap().contains("server 99 is not known"), "{error}");
    assert_eq!(c.admin.call("GET", "/api/v1/groups/typo", None).await.unwrap().0, 404, "nothing was stored");
    t.finish(&["400", "404"]).await;
}
