//! The scheduler service decides *when* work happens: it turns policies' cron and
//! interval schedules into jobs on the JetStream work queue. Not built yet; the
//! engine it will drive lives in `arca-repo`.
