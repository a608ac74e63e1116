# A config in the original CloudSend tool's format: a Python file defining `config`.
# ruff: noqa
# Kept in the original tool's layout on purpose:
# fmt: off
from datetime import timedelta

config = {
    'project'      : 'seed' ,
    'profile'      : None ,
    'dev'          : False ,
    'debug'        : 1 ,
    'maestro'      : 'local' ,
    'auto_stop'    : True ,
    'provider'     : 'local' ,
    'job_assign'   : None ,
    'recover'      : True ,
    'print_deploy' : False ,
    'mutualize_uploads' : True ,

    'instances' : [
        {
            'region'       : None ,
            'cloud_id'     : None ,
            'type'         : 't3.micro' ,
            'cpus'         : None ,
            'gpu'          : None ,
            'disk_size'    : None ,
            'disk_type'    : None ,
            'eco'          : True ,
            'eco_life'     : timedelta(hours=2) ,
            'max_bid'      : '0.05' ,
            'number'       : 2 ,
            'explode'      : True
        }
    ] ,

    'environments' : [
        {
            'name'         : None ,
            'command'      : 'env/setup.sh' ,
            'env_aptget'   : [ "openssh-client" ] ,
            'env_conda'    : "env/environment.yml" ,
            'env_conda_channels' : None ,
            'env_pypi'     : "env/requirements.txt" ,
            'env_julia'    : "Wavelets" ,
        }
    ] ,

    'jobs' : [
        {
            'env_name'     : None ,
            'cpus_req'     : None ,
            'run_script'   : 'scripts/train.py 1 10' ,
            'run_command'  : None ,
            'upload_files' : "data/uploaded.txt" ,
            'input_file'   : 'data/input.csv' ,
            'output_file'  : 'output.dat' ,
            'repeat'       : 2 ,
        } ,
        {
            'env_name'     : None ,
            'cpus_req'     : 2 ,
            'run_script'   : 'scripts/train.py 2 12' ,
            'upload_files' : None ,
            'input_files'  : None ,
            'output_file'  : 'output.dat' ,
        }
    ]
}
