//! A replicated bank: a typed application (deposit, withdraw that can be refused, transfer,
//! balances) on redb and TCP, three processes, exactly-once commands from a client that
//! follows leader changes.
//!
//! ```sh
//! M=1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103
//! cargo run --example bank -- serve --id 1 --dir /tmp/bank1 --members $M &
//! cargo run --example bank -- serve --id 2 --dir /tmp/bank2 --members $M &
//! cargo run --example bank -- serve --id 3 --dir /tmp/bank3 --members $M &
//! cargo run --example bank -- run --members $M --ops 1000    # random operations, checked
//! cargo run --example bank -- leader --members $M
//! ```
//!
//! `run` applies random operations and keeps a model of what each must answer: every
//! response must match the model (a deposit applied twice would not), and at the end the
//! balances must equal the model's and the money must add up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use raft_core::app::{App, AppStateMachine};
use raft_core::{Config, Membership, NodeId};
use raft_transport::client::AppClient;
use raft_transport::start::{Stores, TcpNode};
use raft_transport::TcpConfig;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

// ----- the application: all of it ----------------------------------------------------------

/// The bank's state: account balances in cents.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Bank {
    accounts: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Command {
    Deposit {
        account: String,
        amount: u64,
    },
    Withdraw {
        account: String,
        amount: u64,
    },
    Transfer {
        from: String,
        to: String,
        amount: u64,
    },
}

/// Refusals are answers, not failures: they never stop a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Refused {
    InsufficientFunds { balance: u64 },
    Overflow,
}

#[derive(Serialize, Deserialize)]
enum Query {
    Balances,
}

impl App for Bank {
    type Command = Command;
    /// The balance of the account debited or credited.
    type Response = Result<u64, Refused>;
    type Query = Query;
    type QueryResponse = BTreeMap<String, u64>;

    fn apply(&mut self, cmd: Command) -> Result<u64, Refused> {
        match cmd {
            Command::Deposit { account, amount } => self.credit(&account, amount),
            Command::Withdraw { account, amount } => self.debit(&account, amount),
            Command::Transfer { from, to, amount } => {
                let left = self.debit(&from, amount)?;
                if let Err(e) = self.credit(&to, amount) {
                    self.credit(&from, amount)?; // undo: all or nothing
                    return Err(e);
                }
                Ok(left)
            }
        }
    }

    fn query(&self, _: &Query) -> BTreeMap<String, u64> {
        self.accounts.clone()
    }
}

impl Bank {
    fn credit(&mut self, account: &str, amount: u64) -> Result<u64, Refused> {
        let balance = self.accounts.entry(account.to_string()).or_default();
        *balance = balance.checked_add(amount).ok_or(Refused::Overflow)?;
        Ok(*balance)
    }

    fn debit(&mut self, account: &str, amount: u64) -> Result<u64, Refused> {
        let balance = self.accounts.get(account).copied().unwrap_or(0);
        let left = balance
            .checked_sub(amount)
            .ok_or(Refused::InsufficientFunds { balance })?;
        self.accounts.insert(account.to_string(), left);
        Ok(left)
    }
}

// ----- the processes ------------------------------------------------------------------------

const CLUSTER_ID: u64 = 0xBA2C;

fn members(list: &str) -> Result<Membership, String> {
    let mut m = Membership::default();
    for item in list.split(',').filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("'{item}' is not ID=HOST:PORT"))?;
        let id = NodeId(id.parse().map_err(|_| format!("'{id}' is not a node id"))?);
        m.voters.insert(id);
        m.addresses.insert(id, addr.to_string());
    }
    Ok(m)
}

fn addresses(m: &Membership) -> Vec<SocketAddr> {
    m.addresses
        .values()
        .filter_map(|a| a.parse().ok())
        .collect()
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

async fn serve(args: &[String]) -> Result<(), String> {
    let id = NodeId(
        arg(args, "--id")
            .and_then(|s| s.parse().ok())
            .ok_or("--id N is required")?,
    );
    let dir = arg(args, "--dir").ok_or("--dir PATH is required")?;
    let members = members(&arg(args, "--members").ok_or("--members is required")?)?;
    let (log, snapshots) = raft_storage::open_data_dir(&dir, 2)
        .await
        .map_err(|e| e.to_string())?;
    let stores = Stores {
        log: Arc::new(log),
        snapshots: Arc::new(snapshots),
        state_machine: Box::new(AppStateMachine::new(Bank::default())),
    };
    let tcp = TcpConfig {
        cluster_id: CLUSTER_ID,
        ..TcpConfig::default()
    };
    let node = TcpNode::start(id, members, Config::default(), tcp, stores)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!(
        "bank node {} serving on {}",
        id.0,
        node.transport.local_addr()
    );
    match node.node.stopped().await {
        Some(fatal) => Err(format!("stopped: {fatal}")),
        None => Ok(()),
    }
}

/// What the model says `cmd` must answer, applied to the model.
fn expected(model: &mut Bank, cmd: &Command) -> Result<u64, Refused> {
    model.apply(cmd.clone())
}

async fn run(args: &[String]) -> Result<(), String> {
    let members = members(&arg(args, "--members").ok_or("--members is required")?)?;
    let ops: usize = arg(args, "--ops")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let seed: u64 = arg(args, "--seed")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("bank run: {ops} operations, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut client = AppClient::<Bank>::new(addresses(&members), CLUSTER_ID);
    let names = ["alice", "bob", "carol", "dave", "erin"];
    let mut model = Bank::default();
    let (mut deposited, mut withdrawn, mut refused) = (0u64, 0u64, 0usize);
    for i in 1..=ops {
        let account = names[rng.gen_range(0..names.len())].to_string();
        let amount = rng.gen_range(1..=500);
        let cmd = match rng.gen_range(0..3) {
            0 => Command::Deposit { account, amount },
            1 => Command::Withdraw { account, amount },
            _ => Command::Transfer {
                from: account,
                to: names[rng.gen_range(0..names.len())].to_string(),
                amount,
            },
        };
        let got = client
            .propose(cmd.clone())
            .await
            .map_err(|e| format!("operation {i} ({cmd:?}) failed: {e}"))?;
        let want = expected(&mut model, &cmd);
        if got != want {
            return Err(format!(
                "operation {i} ({cmd:?}) answered {got:?}, the model says {want:?}: applied twice or lost"
            ));
        }
        match (&cmd, &got) {
            (_, Err(_)) => refused += 1,
            (Command::Deposit { amount, .. }, Ok(_)) => deposited += amount,
            (Command::Withdraw { amount, .. }, Ok(_)) => withdrawn += amount,
            (Command::Transfer { .. }, Ok(_)) => {}
        }
        if i % 50 == 0 {
            println!("op {i}");
        }
    }
    let balances = client
        .query(&Query::Balances)
        .await
        .map_err(|e| format!("reading the balances: {e}"))?;
    if balances != model.accounts {
        return Err(format!(
            "balances {balances:?} differ from the model's {:?}",
            model.accounts
        ));
    }
    let total: u64 = balances.values().sum();
    if total != deposited - withdrawn {
        return Err(format!(
            "money is not conserved: {total} held, {deposited} deposited - {withdrawn} withdrawn"
        ));
    }
    println!(
        "bank run: {ops} operations ({refused} refused by the bank, {} attempts retried across failures), balances match the model, money conserved: {total} = {deposited} deposited - {withdrawn} withdrawn",
        client.raw().retries
    );
    Ok(())
}

async fn leader(args: &[String]) -> Result<(), String> {
    let members = members(&arg(args, "--members").ok_or("--members is required")?)?;
    let mut client = AppClient::<Bank>::new(addresses(&members), CLUSTER_ID);
    let info = client.raw().leader().await.map_err(|e| e.to_string())?;
    match info.leader {
        Some(l) => println!("{}", l.0),
        None => println!("none"),
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(&args).await,
        Some("run") => run(&args).await,
        Some("leader") => leader(&args).await,
        _ => Err("usage: bank serve --id N --dir PATH --members ID=HOST:PORT,...\n       bank run --members ... [--ops N] [--seed S]\n       bank leader --members ...".into()),
    };
    if let Err(e) = result {
        eprintln!("bank: {e}");
        std::process::exit(1);
    }
}
