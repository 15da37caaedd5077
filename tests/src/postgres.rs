//! A PostgreSQL server of a test's own (Debian's `postgresql` binaries, on a free port, in a temporary directory),
//! for tests that stop and start the database under the service: the machine's shared server must not be touched.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// A private PostgreSQL cluster; stopped and removed when dropped.
#[derive(Debug)]
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    /// Creates a cluster (trust authentication, user `postgres`) and starts it.
    pub fn start() -> anyhow::Result<Self> {
        let initdb = std::fs::read_dir("/usr/lib/postgresql")?
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin/initdb"))
            .filter(|p| p.exists())
            .max()
            .context("no /usr/lib/postgresql/*/bin/initdb (Debian package postgresql)")?;
        let bin = initdb.parent().context("initdb has a directory")?.to_path_buf();
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let pg = Self { bin, dir, port };
        if is_root() {
            run(Command::new("chown").args(["-R", "postgres"]).arg(pg.dir.path()))?;
        }
        run(pg.as_postgres(&pg.bin.join("initdb")).arg("-D").arg(pg.data()).args(["-U", "postgres", "--auth=trust"]))?;
        pg.start_again()?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The command, run as the `postgres` user when this process is root (PostgreSQL refuses to run as root).
    fn as_postgres(&self, program: &Path) -> Command {
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown: open connections are cut, as when a managed database fails over).
    pub fn stop(&self) -> anyhow::Result<()> {
        run(self.as_postgres(&self.bin.join("pg_ctl")).arg("-D").arg(self.data()).args(["-m", "fast", "-w", "stop"]))
    }

    /// Starts the server (again) on its port.
    pub fn start_again(&self) -> anyhow::Result<()> {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        run(self
            .as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-o", &options, "-l"])
            .arg(self.dir.path().join("log"))
            .args(["-w", "start"]))
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

fn is_root() -> bool {
    std::env::var("USER").is_ok_and(|u| u == "root")
        || Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout == b"0\n")
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command.output().with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?}: {}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}
