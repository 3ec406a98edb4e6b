//! `rfaas`: the executor manager, the executor process, a local cluster, and cluster status.
//! See `rfaas --help`; the work is done by [`rfaas::executor_manager`], [`rfaas::executor`] and
//! [`rfaas::cluster`].

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rfaas::cluster::{local, restart, status};

/// The managers serve many small HTTP requests on several threads; glibc's malloc made them
/// wait on its arena locks (a resource manager under 30,000 requests/s: 10,600-11,100 against
/// 12,000-12,900 grants/s with mimalloc, paired runs of `rm_load_benchmark`). Executors
/// (`rfaas-executor`) keep glibc's: mimalloc's start-up cost a pooled cold start about 25 µs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Serverless functions for supercomputers, invoked in microseconds over RDMA.
#[derive(Parser)]
#[command(name = "rfaas", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an executor manager: rent this node's cores to clients, one executor per allocation.
    ExecutorManager(Box<rfaas::executor_manager::ManagerArgs>),
    /// Run the resource manager: register executor managers, grant leases on their cores.
    ResourceManager(Box<rfaas::resource_manager::RmArgs>),
    /// The executor process (started by an executor manager; reads its configuration on stdin).
    #[command(hide = true)]
    Executor,
    /// Start or stop a cluster on this machine (127.0.0.1), in the background: a resource
    /// manager and N executor managers registered with it.
    LocalCluster {
        #[command(subcommand)]
        command: LocalCluster,
    },
    /// Show the cluster: the resource manager's nodes and leases (when the cluster has one), and
    /// every executor manager's cores, memory and allocations.
    Status(status::StatusArgs),
    /// Run one function once on one core and write its output to stdout.
    Invoke(InvokeArgs),
}

/// `rfaas invoke`: allocate one core, run one function on one input, release.
#[derive(clap::Args)]
struct InvokeArgs {
    /// cluster.json (default: $RFAAS_CLUSTER).
    #[arg(long)]
    cluster: Option<std::path::PathBuf>,
    /// The function library (a shared object with the rFaaS C ABI).
    #[arg(long)]
    library: std::path::PathBuf,
    /// Function name in the library.
    #[arg(long)]
    function: String,
    /// Input file, or - for standard input (default: empty input).
    #[arg(long)]
    input: Option<std::path::PathBuf>,
    /// Largest output accepted, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    output_capacity: u32,
    /// Seconds to wait for the result.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
}

#[derive(Subcommand)]
enum LocalCluster {
    /// Start a resource manager (unless --no-resource-manager) and N executor managers that
    /// register with it; returns once all are ready, having written DIR/cluster.json.
    Start(local::StartArgs),
    /// Stop the executor managers started in DIR (they deregister), every process they spawned,
    /// then the resource manager; its state file DIR/rm-state is kept.
    Stop(local::StopArgs),
    /// Start one daemon of the cluster in DIR again (`rm` or `em-N`) with the arguments and on
    /// the address it had (one still running is stopped first), as after a crash.
    Restart(restart::RestartArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Executor) {
        "warn"
    } else {
        "info"
    };
    rfaas::logging::init(default_level);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            // The whole chain on one line, never a backtrace: these are errors for people.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::ExecutorManager(args) => {
            rfaas::executor_manager::run(&args).context("executor manager")?
        }
        Command::ResourceManager(args) => {
            rfaas::resource_manager::run(&args).context("resource manager")?
        }
        // The executor already reported its failure to the manager on stdout.
        Command::Executor => {
            return Ok(if rfaas::executor::main_stdin().is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::LocalCluster {
            command: LocalCluster::Start(args),
        } => {
            let cluster = local::start(&args).context("local-cluster start")?;
            if let Some(rm) = &cluster.resource_manager {
                println!("rm  http://{rm}  (resource manager)");
            }
            for m in &cluster.executor_managers {
                println!("{}  http://{}  ({})", m.name, m.http, m.node);
            }
            println!(
                "cluster ready ({}): {}",
                cluster.provider,
                local::RunDir::new(&args.run_dir).cluster_file().display()
            );
        }
        Command::LocalCluster {
            command: LocalCluster::Stop(args),
        } => match local::stop(&args).context("local-cluster stop")? {
            Some(s) => println!(
                "stopped {} manager process(es) ({} killed)",
                s.managers, s.killed
            ),
            None => println!("no local cluster running in {}", args.run_dir.display()),
        },
        Command::LocalCluster {
            command: LocalCluster::Restart(args),
        } => {
            let r = restart::restart(&args).context("local-cluster restart")?;
            println!(
                "{} restarted: pid {}, http://{}{}",
                args.name,
                r.pid,
                r.address,
                if r.was_running {
                    " (the running one was stopped)"
                } else {
                    ""
                }
            );
        }
        Command::Invoke(a) => {
            let input = match a.input.as_deref() {
                None => Vec::new(),
                Some(p) if p.as_os_str() == "-" => {
                    let mut v = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
                        .context("read stdin")?;
                    v
                }
                Some(p) => {
                    std::fs::read(p).with_context(|| format!("read input {}", p.display()))?
                }
            };
            let cluster = rfaas::client::Cluster::open(a.cluster.as_deref()).context("cluster")?;
            let timeout = std::time::Duration::from_secs(a.timeout_s);
            let out = rfaas::client::invoke_once(
                &cluster,
                &a.library,
                &a.function,
                &input,
                a.output_capacity,
                timeout,
            )
            .context("invoke")?;
            std::io::Write::write_all(&mut std::io::stdout(), &out).context("write output")?;
        }
        Command::Status(args) => {
            let (table, all_ok) = status::run(&args).context("status")?;
            print!("{table}");
            return Ok(if all_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
