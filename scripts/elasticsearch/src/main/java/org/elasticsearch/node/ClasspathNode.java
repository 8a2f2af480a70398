package org.elasticsearch.node;

import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.plugins.MockPluginsService;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.plugins.PluginsLoader;
import org.elasticsearch.plugins.PluginsService;

import java.util.Collection;
import java.util.Map;

/**
 * A node whose plugins are classes on the classpath, as the test framework's MockNode builds it,
 * but without MockNode's use of ESTestCase (whose static set-up refuses to run as root and wants a
 * randomized-testing context). It sits in Node's package because NodeConstruction and
 * NodeServiceProvider are package-private; on the classpath (no module layer) that is allowed.
 * Everything else in the node is the real server: real HTTP, real transport, real Lucene.
 */
public class ClasspathNode extends Node {
    public ClasspathNode(Settings settings, Collection<Class<? extends Plugin>> plugins) {
        this(InternalSettingsPreparer.prepareEnvironment(settings, Map.of(), null, () -> settings.get("node.name", "es")), plugins);
    }

    private ClasspathNode(Environment environment, Collection<Class<? extends Plugin>> plugins) {
        super(NodeConstruction.prepareConstruction(environment, null, new NodeServiceProvider() {
            @Override
            PluginsService newPluginService(Environment env, PluginsLoader loader) {
                return new MockPluginsService(env.settings(), env, plugins);
            }
        }, true));
    }
}
