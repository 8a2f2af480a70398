package dedup.es;

import org.elasticsearch.common.logging.LogConfigurator;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.node.ClasspathNode;
import org.elasticsearch.node.Node;
import org.elasticsearch.transport.netty4.Netty4Plugin;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.CountDownLatch;

/**
 * Starts one real Elasticsearch node for the tests: the server jar from Maven Central, with its
 * HTTP and transport layer (the transport-netty4 module) loaded from the classpath through the test
 * framework's MockNode. No other module or x-pack plugin is loaded, so there is no security and no
 * endpoint of the modules that are not on Maven Central (e.g. `GET /`, `_delete_by_query`).
 *
 * Environment: ES_PORT (HTTP port, default 9200), ES_TRANSPORT_PORT (default 9300-9399),
 * ES_HOME (folder for data and logs, default a new temporary folder).
 */
public final class Launcher {
    public static void main(String[] args) throws Exception {
        // Before anything logs: our log4j configuration, not the test framework's log4j2-test.properties.
        System.setProperty("log4j2.configurationFile", "classpath:dedup-es-log4j2.properties");
        String port = env("ES_PORT", "9200");
        String transportPort = env("ES_TRANSPORT_PORT", "9300-9399");
        String homeVar = System.getenv("ES_HOME");
        Path home = homeVar == null || homeVar.isEmpty() ? Files.createTempDirectory("es-home") : Path.of(homeVar);
        Files.createDirectories(home.resolve("data"));
        Files.createDirectories(home.resolve("logs"));

        Settings settings = Settings.builder()
            .put("path.home", home.toString())
            .put("path.data", home.resolve("data").toString())
            .put("path.logs", home.resolve("logs").toString())
            .put("cluster.name", "image-dedup-test")
            .put("node.name", "es-test")
            .put("discovery.type", "single-node")
            .put("network.host", "127.0.0.1")
            .put("http.port", port)
            .put("transport.port", transportPort)
            .put("http.type", Netty4Plugin.NETTY_HTTP_TRANSPORT_NAME)
            .put("transport.type", Netty4Plugin.NETTY_TRANSPORT_NAME)
            // a test machine's disk may be nearly full: do not refuse to allocate shards for it
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .build();

        LogConfigurator.registerErrorListener();
        LogConfigurator.setNodeName("es-test");
        LogConfigurator.setClusterName("image-dedup-test");
        LogConfigurator.configureESLogging();

        Node node = new ClasspathNode(settings, List.of(Netty4Plugin.class));
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                stopped.countDown();
            }
        }, "es-shutdown"));
        node.start();
        System.out.println("elasticsearch started: http://127.0.0.1:" + port + " home " + home);
        // The node's threads are daemons: keep the JVM alive until it is told to stop.
        stopped.await();
    }

    private static String env(String name, String fallback) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? fallback : v;
    }
}
