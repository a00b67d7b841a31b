"""Extensions Envoy ships only in its contrib build (``envoy-contrib`` images): their protos
are not in xds-protos, so their ``@type`` is unknown to the descriptor pool. An operator
who uses one should hear that it is a real Envoy extension proxyd does not implement, not
that the type is unknown or a near-miss of another one.

Proto package prefix -> extension name, from Envoy's contrib/contrib_build_config.bzl.
"""

EXTENSIONS = {
    'envoy.extensions.compression.qatzip.': 'envoy.compression.qatzip.compressor',
    'envoy.extensions.compression.qatzstd.': 'envoy.compression.qatzstd.compressor',
    'envoy.extensions.filters.http.checksum.': 'envoy.filters.http.checksum',
    'envoy.extensions.filters.http.client_cert.': 'envoy.filters.http.client_cert',
    'envoy.extensions.filters.http.dynamo.': 'envoy.filters.http.dynamo',
    'envoy.extensions.filters.http.golang.': 'envoy.filters.http.golang',
    'envoy.extensions.filters.http.language.': 'envoy.filters.http.language',
    'envoy.extensions.filters.http.peak_ewma.': 'envoy.filters.http.peak_ewma',
    'envoy.extensions.filters.http.sxg.': 'envoy.filters.http.sxg',
    'envoy.extensions.filters.http.peer_metadata.': 'envoy.filters.http.peer_metadata',
    'envoy.extensions.filters.http.istio_stats.': 'envoy.filters.http.istio_stats',
    'envoy.extensions.filters.http.alpn.': 'envoy.filters.http.alpn',
    'envoy.extensions.filters.network.client_ssl_auth.': 'envoy.filters.network.client_ssl_auth',
    'envoy.extensions.filters.network.kafka_broker.': 'envoy.filters.network.kafka_broker',
    'envoy.extensions.filters.network.kafka_mesh.': 'envoy.filters.network.kafka_mesh',
    'envoy.extensions.filters.network.mysql_proxy.': 'envoy.filters.network.mysql_proxy',
    'envoy.extensions.filters.network.postgres_proxy.': 'envoy.filters.network.postgres_proxy',
    'envoy.extensions.filters.network.rocketmq_proxy.': 'envoy.filters.network.rocketmq_proxy',
    'envoy.extensions.filters.network.golang.': 'envoy.filters.network.golang',
    'envoy.extensions.filters.network.metadata_exchange.': 'envoy.filters.network.metadata_exchange',
    'envoy.extensions.filters.network.peer_metadata.': 'envoy.filters.network.peer_metadata',
    'envoy.extensions.filters.network.sip_proxy.': 'envoy.filters.network.sip_proxy',
    'envoy.extensions.filters.network.generic_proxy.codecs.kafka.': 'envoy.generic_proxy.codecs.kafka',
    'envoy.extensions.filters.listener.postgres_inspector.': 'envoy.filters.listener.postgres_inspector',
    'envoy.extensions.stat_sinks.kafka.': 'envoy.stat_sinks.kafka',
    'envoy.extensions.tap_sinks.udp_sink.': 'envoy.tap_sinks.udp_sink',
    'envoy.extensions.private_key_providers.kae.': 'envoy.tls.key_providers.kae',
    'envoy.extensions.private_key_providers.cryptomb.': 'envoy.tls.key_providers.cryptomb',
    'envoy.extensions.private_key_providers.qat.': 'envoy.tls.key_providers.qat',
    'envoy.extensions.vcl.': 'envoy.bootstrap.vcl',
    'envoy.extensions.matching.input_matchers.hyperscan.': 'envoy.matching.input_matchers.hyperscan',
    'envoy.extensions.regex_engines.hyperscan.': 'envoy.regex_engines.hyperscan',
    'envoy.extensions.load_balancing_policies.peak_ewma.': 'envoy.load_balancing_policies.peak_ewma',
    'envoy.extensions.config.v3alpha.KvStoreXdsDelegateConfig': 'envoy.xds_delegates.kv_store',
    'envoy.extensions.router.cluster_specifier.golang.': 'envoy.router.cluster_specifier_plugin.golang',
    'envoy.extensions.upstreams.http.tcp.golang.': 'envoy.upstreams.http.tcp.golang',
}


def extension(type_url):
    """The contrib extension a type URL belongs to, or None."""
    name = type_url.rsplit('/', 1)[-1]
    return next((ext for prefix, ext in EXTENSIONS.items() if name.startswith(prefix)), None)
