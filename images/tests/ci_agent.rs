//! The CI-agent image on a real Docker engine: generic mode runs the given command as uid 1000
//! and exits with its status; Jenkins mode downloads agent.jar from JENKINS_URL and runs it
//! with the URL, secret, name and work directory — checked against a stand-in Jenkins (another
//! container serving a small agent.jar that reports what it was given) — without printing the
//! secret.

mod common;

use bollard::models::ContainerCreateBody;
use deskpod_images::catalogue::{self, ci_agent};
use deskpod_images::probe::Container;
use rstest::rstest;
use std::time::{Duration, Instant};

const IMAGE: &str = "ci-agent";
const EXIT_DEADLINE: Duration = Duration::from_secs(120);

fn agent(cmd: &[&str], env: &[String]) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(catalogue::tag(IMAGE).unwrap().to_string()),
        cmd: (!cmd.is_empty()).then(|| cmd.iter().map(|s| s.to_string()).collect()),
        env: Some(env.to_vec()),
        ..ContainerCreateBody::default()
    }
}

async fn run_to_exit(body: ContainerCreateBody) -> (i64, String) {
    let docker = common::docker().await;
    let container = Container::run(&docker, body).await.unwrap();
    let code = container.wait_exit(EXIT_DEADLINE).await.unwrap();
    let log = container.logs().await;
    container.remove().await.unwrap();
    (code, log)
}

#[rstest]
#[case::success(&["sh", "-c", "echo ran as $(id -u) in $PWD"], 0, "ran as 1000 in /home/agent")]
#[case::failure_code_propagates(&["sh", "-c", "echo failing; exit 7"], 7, "failing")]
#[case::a_jdk_is_there(&["javac", "-version"], 0, "javac 17")]
#[case::no_command_no_jenkins(&[], 64, "no command given")]
#[tokio::test]
async fn generic_mode_runs_the_command_and_exits_with_its_status(
    #[case] cmd: &[&str],
    #[case] code: i64,
    #[case] output: &str,
) {
    common::ensure_built(&[IMAGE]);
    let (got, log) = run_to_exit(agent(cmd, &[])).await;
    assert_eq!(got, code, "log:\n{log}");
    assert!(log.contains(output), "{output:?} not in the log:\n{log}");
}

#[tokio::test]
async fn jenkins_mode_without_a_secret_says_what_is_missing() {
    common::ensure_built(&[IMAGE]);
    let env = [format!("{}=http://jenkins.invalid:8080", ci_agent::JENKINS_URL_ENV)];
    let (code, log) = run_to_exit(agent(&[], &env)).await;
    assert_eq!(code, 64, "log:\n{log}");
    assert!(log.contains("JENKINS_SECRET is not"), "log:\n{log}");
}

/// A stand-in for Jenkins: compiles an agent.jar whose main checks the secret it is given and
/// prints the other arguments, and serves it at /jnlpJars/agent.jar on port 8080 (JDK's own
/// HTTP server, run as a single-file program).
const FAKE_JENKINS: &str = r#"
set -e
cd "$(mktemp -d)"
cat > Agent.java <<JAVA
public class Agent {
    public static void main(String[] args) {
        java.util.Map<String, String> a = new java.util.HashMap<>();
        for (int i = 0; i + 1 < args.length; i += 2) a.put(args[i], args[i + 1]);
        boolean secretOk = "$EXPECTED_SECRET".equals(a.get("-secret"));
        System.out.println("fake agent: url=" + a.get("-url") + " name=" + a.get("-name")
            + " workDir=" + a.get("-workDir") + " secretOk=" + secretOk
            + " secretInEnv=" + (System.getenv("JENKINS_SECRET") != null));
        System.exit(secretOk ? 0 : 3);
    }
}
JAVA
cat > Serve.java <<'JAVA'
import com.sun.net.httpserver.HttpServer;
import java.net.InetSocketAddress;
import java.nio.file.Files;
import java.nio.file.Path;
public class Serve {
    public static void main(String[] args) throws Exception {
        byte[] jar = Files.readAllBytes(Path.of("agent.jar"));
        HttpServer server = HttpServer.create(new InetSocketAddress(8080), 0);
        server.createContext("/jnlpJars/agent.jar", exchange -> {
            System.out.println("served " + exchange.getRequestURI());
            exchange.sendResponseHeaders(200, jar.length);
            exchange.getResponseBody().write(jar);
            exchange.close();
        });
        server.start();
    }
}
JAVA
javac Agent.java
jar cfe agent.jar Agent Agent.class
exec java Serve.java
"#;

#[tokio::test]
async fn jenkins_mode_downloads_agent_jar_and_connects_with_url_secret_and_name() {
    common::ensure_built(&[IMAGE]);
    let docker = common::docker().await;
    let secret = "0123456789abcdef-not-to-be-printed";
    let jenkins = Container::run(&docker, agent(&["bash", "-c", FAKE_JENKINS], &[format!("EXPECTED_SECRET={secret}")]))
        .await
        .unwrap();
    let ip = jenkins.bridge_ip().await.unwrap();

    // Ready when the port accepts (javac and the JVM take a few seconds).
    let deadline = Instant::now() + Duration::from_secs(90);
    while tokio::net::TcpStream::connect((ip.as_str(), 8080)).await.is_err() {
        assert!(Instant::now() < deadline, "the stand-in Jenkins did not listen; log:\n{}", jenkins.logs().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let url = format!("http://{ip}:8080/");
    let env = [
        format!("{}={url}", ci_agent::JENKINS_URL_ENV),
        format!("{}={secret}", ci_agent::JENKINS_SECRET_ENV),
        format!("{}=agent-7", ci_agent::JENKINS_AGENT_NAME_ENV),
    ];
    let (code, log) = run_to_exit(agent(&[], &env)).await;
    let served = jenkins.logs().await;
    jenkins.remove().await.unwrap();

    assert_eq!(code, 0, "the agent did not get the right secret; log:\n{log}");
    assert!(served.contains("served /jnlpJars/agent.jar"), "jenkins log:\n{served}");
    let expected = format!(
        "fake agent: url=http://{ip}:8080 name=agent-7 workDir={} secretOk=true secretInEnv=false",
        ci_agent::HOME
    );
    assert!(log.contains(&expected), "{expected:?} not in the log:\n{log}");
    assert!(!log.contains(secret), "the secret was printed:\n{log}");
}
